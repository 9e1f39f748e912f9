import torch
from torch.utils.data import DataLoader

from era_utils.config import NUM_CLASSES
from era_utils.data import CIFAR10DataModule
from era_utils.lr_finder import find_lr
from era_utils.model import CustomResNet
from era_utils.train import cpu_has_fast_bf16


def test_range_test_suggests_an_lr_saves_its_plot_and_restores_the_weights(image_folder, tmp_path):
    torch.manual_seed(0)
    net = CustomResNet(NUM_CLASSES)
    before = {k: v.clone() for k, v in net.state_dict().items()}
    loader = DataLoader(CIFAR10DataModule(image_folder).train_dataset(), batch_size=8, shuffle=True)
    result = find_lr(
        net, loader, weight_decay=0.05, num_iter=20, bf16=cpu_has_fast_bf16(), plot_path=tmp_path / "lr.png"
    )
    assert len(result.lrs) == 20 and result.lrs[0] < result.lrs[-1]
    assert result.lrs[0] <= result.suggested_lr <= result.lrs[-1]
    assert (tmp_path / "lr.png").stat().st_size > 0
    after = net.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
