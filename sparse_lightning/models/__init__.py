"""The classification LightningModule and a small model zoo (plain ``nn.Module`` nets)."""

from sparse_lightning.models.classifier import Classifier
from sparse_lightning.models.cnn1d import CNN1d
from sparse_lightning.models.efficientnet import EfficientNetB0
from sparse_lightning.models.gru import GRUClassifier
from sparse_lightning.models.lenet5 import LeNet5
from sparse_lightning.models.mlp import MLP
from sparse_lightning.models.mobilenet import MobileNetV2, MobileNetV3Small
from sparse_lightning.models.resnet20 import ResNet20

__all__ = [
    "CNN1d", "Classifier", "EfficientNetB0", "GRUClassifier", "LeNet5", "MLP", "MobileNetV2", "MobileNetV3Small", "ResNet20",
]
