"""Train, inspect and export a ResNet-9 CIFAR-10 classifier with PyTorch Lightning."""
