"""The EMA is a real average: of the weights and the batch-norm statistics, with the README's warm-up at every
step, and it is what validation, the end of training and the export use. Reads the shared short fit."""

import warnings

import pytest
import torch
from learning_helpers import Recorder, cpu_config
from safetensors.torch import load_file
from torch import nn

from era_utils.config import NUM_CLASSES
from era_utils.ema import ema_with_warmup, highest_reachable_decay
from era_utils.export import export_model
from era_utils.train import build_datamodule, fit


def _net_part(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k.removeprefix("net."): v for k, v in state.items() if k.startswith("net.")}


def _gap(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor], keys) -> float:
    return max((a[k].float() - b[k].float()).abs().max().item() for k in keys)


def test_the_average_follows_the_warm_up_rule_at_every_step(squares_fit):
    rec = squares_fit.recorder
    assert rec.updates == squares_fit.trainer.global_step == 24
    # Before each step after the first, the callback's average equals the one computed here from
    # min(0.995, (1 + n) / (10 + n)), for every parameter and every batch-norm buffer.
    assert len(rec.step_gaps) == rec.updates - 1
    assert max(rec.step_gaps) < 1e-6


def test_batch_norm_statistics_are_averaged_not_copied(squares_fit):
    rec, lit = squares_fit.recorder, squares_fit.lit
    stats = [k for k in rec.ema if k.endswith(("running_mean", "running_var"))]
    assert len(stats) == 2 * 8  # eight batch norms
    final = {k: v for k, v in [*lit.named_parameters(), *lit.named_buffers()] if k in rec.ema}
    assert _gap(final, rec.ema, rec.ema) < 1e-6  # the module holds the average after training, buffers included
    # ... which is far from the raw final statistics (a copy of them would pass the check above only if equal).
    assert _gap(rec.raw_final, rec.ema, stats) > 1e-2
    assert _gap(rec.raw_final, rec.ema, [k for k in rec.ema if k not in stats]) > 1e-3


def test_batch_norms_step_counters_in_the_averaged_model_count_the_steps(squares_fit):
    """A mean of counters would be truncated to an integer below the steps taken (2153 of 2352 in a 24-epoch run)."""
    counters = [b for name, b in squares_fit.lit.net.named_buffers() if name.endswith("num_batches_tracked")]
    assert len(counters) == 8 and {int(c) for c in counters} == {squares_fit.trainer.global_step}


def test_validation_uses_the_average(squares_fit):
    rec = squares_fit.recorder
    assert len(rec.val_gaps) == squares_fit.cfg.epochs  # one validation per epoch, not counting the sanity check
    assert max(rec.val_gaps) < 1e-6


def test_the_exported_weights_are_the_average(squares_fit, tmp_path):
    weights = export_model(squares_fit.lit.net, tmp_path)
    exported = {k: v for k, v in load_file(str(weights)).items() if v.is_floating_point()}
    average = _net_part(squares_fit.recorder.ema)
    assert exported.keys() == average.keys()
    assert _gap(exported, average, average) < 1e-6


@pytest.mark.parametrize("n", [1, 2, 10, 100, 1789, 1790, 100_000])
def test_one_update_uses_decay_min_of_the_cap_and_the_warm_up(n):
    update = ema_with_warmup(0.995)
    ema, current = torch.zeros(3), torch.ones(3)
    decay = min(0.995, (1 + n) / (10 + n))  # the warm-up reaches the cap at n = 1790
    assert update(ema, current, torch.tensor(n)) == pytest.approx(torch.full((3,), 1 - decay), rel=1e-6)


def _fit_small(image_folder, out, decay: float, callbacks=()) -> dict[str, torch.Tensor]:
    """Ten updates (40 images in batches of 8, two epochs) of a small network (the rule is the point): the average
    it ends with."""
    cfg = cpu_config(image_folder, out, epochs=2, batch_size=8, ema_decay=decay)
    torch.manual_seed(0)
    net = nn.Sequential(nn.Flatten(), nn.Linear(3 * 32 * 32, NUM_CLASSES))
    _, lit = fit(cfg, net, build_datamodule(cfg), cfg.max_lr, extra_callbacks=list(callbacks))
    return {k: v.detach().clone() for k, v in lit.net.state_dict().items()}


def test_a_decay_other_than_the_default_is_the_one_the_average_follows(image_folder, tmp_path):
    """The shared fit runs the default 0.995, where an averaging callback built with the default instead of the
    configured decay would pass unseen. At 0.2 the cap takes over from the warm-up from the third update on (n = 2)."""
    configured, default = Recorder(0.2), Recorder(0.995)
    _fit_small(image_folder, tmp_path, 0.2, callbacks=[configured, default])
    assert configured.updates == 10  # 40 training images in batches of 8, two epochs
    assert max(configured.step_gaps) < 1e-6
    assert max(default.step_gaps) > 1e-3  # the default's average is told apart


def test_ema_decay_ramps_up_from_the_first_updates_to_the_configured_decay():
    update = ema_with_warmup(0.995)
    ema, current = torch.zeros(1), torch.ones(1)
    assert update(ema, current, torch.tensor(1)).item() == pytest.approx(1 - 2 / 11)
    assert update(ema, current, torch.tensor(100_000)).item() == pytest.approx(0.005)
    for n in range(1, 99):  # one epoch of CIFAR-10 at batch 512
        ema = update(ema, current, torch.tensor(n))
    assert ema.item() > 0.99  # without the ramp: 1 - 0.995 ** 98 = 0.39


def test_batch_norms_step_counters_follow_the_model_rather_than_a_truncated_mean():
    update = ema_with_warmup(0.995)
    counter = update(torch.tensor(2000), torch.tensor(2352), torch.tensor(2351))
    assert counter.dtype == torch.int64 and counter.item() == 2352


def test_the_highest_reachable_decay_is_the_warm_ups_at_the_last_update():
    # 24 epochs of 98 batches: the first update copies, the last comes after 2351, with decay 2352 / 2361.
    assert highest_reachable_decay(24 * 98) == pytest.approx(2352 / 2361)
    assert 0.995 < highest_reachable_decay(24 * 98) < 0.997  # the default is reached; 0.998 and 0.999 are not
    assert highest_reachable_decay(10) == pytest.approx(10 / 19)


def test_a_decay_the_warm_up_never_reaches_is_warned_of_and_changes_nothing(image_folder, tmp_path):
    """In ten updates the warm-up rises to 10 / 19: 0.9 and 0.99 average the same weights, and both say so."""
    with pytest.warns(UserWarning, match=r"EMA decay 0\.9 is never reached: .* only to 0\.5263 in this run's 10 steps"):
        at_09 = _fit_small(image_folder, tmp_path / "a", 0.9)
    with pytest.warns(UserWarning, match=r"EMA decay 0\.99 is never reached"):
        at_099 = _fit_small(image_folder, tmp_path / "b", 0.99)
    assert _gap(at_09, at_099, at_09) == 0


def test_a_decay_the_warm_up_reaches_is_not_warned_of_and_matters(image_folder, tmp_path):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        at_04 = _fit_small(image_folder, tmp_path / "a", 0.4)
    assert not [w for w in caught if "EMA decay" in str(w.message)]
    at_09 = _fit_small(image_folder, tmp_path / "b", 0.9)
    assert _gap(at_04, at_09, at_04) > 1e-4  # the cap took over from the third update on: another average
