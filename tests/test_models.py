"""The model zoo: every net on every input shape it accepts, plus each family's architecture.

Run: python -m pytest tests/test_models.py -q
"""

import inspect
import typing
from collections.abc import Sequence

import pytest
import torch
from torch import nn

from sparse_lightning.errors import ConfigError
from sparse_lightning.models.cnn1d import CNN1d
from sparse_lightning.models.gru import GRUClassifier
from sparse_lightning.models.lenet5 import LeNet5
from sparse_lightning.models.efficientnet import EfficientNetB0
from sparse_lightning.models.mlp import MLP
from sparse_lightning.models.mobilenet import MobileNetV2, MobileNetV3Small
from sparse_lightning.models.resnet20 import ResNet20

SIGNAL, DIGITS, CIFAR = (1, 40), (1, 8, 8), (3, 32, 32)
NUM_CLASSES = 10

Net = type[nn.Module]
Shape = tuple[int, ...]

# net -> (input shapes it accepts, input shapes it rejects)
ZOO: dict[Net, tuple[list[Shape], list[Shape]]] = {
    MLP: ([SIGNAL, DIGITS, CIFAR], []),
    CNN1d: ([SIGNAL, (3, 17)], [DIGITS, CIFAR, (40,)]),
    GRUClassifier: ([SIGNAL, DIGITS, CIFAR], [(40,), (1, 1, 8, 8)]),
    LeNet5: ([DIGITS, (1, 28, 28), CIFAR], [SIGNAL, (1, 3, 3)]),
    ResNet20: ([DIGITS, CIFAR], [SIGNAL]),
    MobileNetV2: ([DIGITS, CIFAR], [SIGNAL]),
    MobileNetV3Small: ([DIGITS, CIFAR], [SIGNAL]),
    EfficientNetB0: ([DIGITS, CIFAR], [SIGNAL]),
}


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """Tiny nets gain nothing from intra-op threads, and 2 OpenMP threads on 2 busy cores
    spin on barriers: a ResNet20 step then takes 30x longer. Restored after the module."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


ACCEPTED = [(net, shape) for net, (ok, _) in ZOO.items() for shape in ok]
REJECTED = [(net, shape) for net, (_, bad) in ZOO.items() for shape in bad]


def _id(value: object) -> str:
    return value.__name__ if isinstance(value, type) else "x".join(map(str, value))


@pytest.mark.parametrize(("net", "shape"), ACCEPTED, ids=_id)
def test_forward_backward_gives_logits_and_grads(net: Net, shape: Shape) -> None:
    torch.manual_seed(0)
    model = net(shape, NUM_CLASSES)
    before = {name: p.shape for name, p in model.named_parameters()}
    assert before, "a net without parameters cannot be pruned"

    logits = model(torch.randn(4, *shape))

    assert logits.shape == (4, NUM_CLASSES)
    assert logits.dtype == torch.float32
    assert {name: p.shape for name, p in model.named_parameters()} == before  # nothing lazy
    logits.logsumexp(dim=1).sum().backward()
    missing = [name for name, p in model.named_parameters() if p.grad is None]
    assert not missing, f"parameters unused by forward: {missing}"


@pytest.mark.parametrize(("net", "shape"), REJECTED, ids=_id)
def test_incompatible_input_shape_raises_config_error(net: Net, shape: Shape) -> None:
    with pytest.raises(ConfigError, match=net.__name__):
        net(shape, NUM_CLASSES)


@pytest.mark.parametrize(("net", "shape"), ACCEPTED, ids=_id)
def test_few_sgd_steps_reduce_loss_on_fixed_batch(net: Net, shape: Shape) -> None:
    torch.manual_seed(0)
    model = net(shape, NUM_CLASSES)
    x, y = torch.randn(16, *shape), torch.arange(16) % NUM_CLASSES
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    loss_fn = nn.CrossEntropyLoss()
    losses = []
    for _ in range(6):
        loss = loss_fn(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())

    assert losses[-1] < losses[0]


@pytest.mark.parametrize("net", list(ZOO), ids=_id)
def test_constructor_takes_typed_primitives_with_defaults(net: type[nn.Module]) -> None:
    params = list(inspect.signature(net.__init__).parameters.values())[1:]
    assert [p.name for p in params[:2]] == ["input_shape", "num_classes"]
    primitives = (int, float, bool, str, Sequence[int])
    hints = typing.get_type_hints(net.__init__)  # resolves string annotations
    for p in params[2:]:
        assert p.default is not inspect.Parameter.empty, f"{net.__name__}.{p.name} needs a default"
        assert hints[p.name] in primitives, f"{net.__name__}.{p.name}: {hints[p.name]}"


def test_mlp_default_is_lenet_300_100_with_adjustable_dropout() -> None:
    model = MLP(DIGITS, NUM_CLASSES, dropout=0.2)

    shapes = [tuple(m.weight.shape) for m in model.modules() if isinstance(m, nn.Linear)]
    assert shapes == [(300, 64), (100, 300), (NUM_CLASSES, 100)]
    assert [d.p for d in model.dropouts] == [0.2, 0.2]
    model.dropouts[0].p = 0.5  # what a method that adapts dropout does
    assert isinstance(model.features[3], nn.Dropout) and model.features[3].p == 0.5


def test_cnn1d_depth_and_width_follow_arguments() -> None:
    model = CNN1d(SIGNAL, NUM_CLASSES, channels=8, num_layers=4, kernel_size=3)

    convs = [m for m in model.modules() if isinstance(m, nn.Conv1d)]
    assert [tuple(c.weight.shape) for c in convs] == [(8, 1, 3)] + [(8, 8, 3)] * 3
    assert model(torch.randn(2, *SIGNAL)).shape == (2, NUM_CLASSES)


def test_gru_reads_images_as_rows() -> None:
    model = GRUClassifier(CIFAR, NUM_CLASSES, hidden_size=32, num_layers=2)

    assert isinstance(model.rnn, nn.GRU)
    assert model.rnn.input_size == 3 * 32  # C * W features per row
    assert tuple(model.rnn.weight_hh_l1.shape) == (3 * 32, 32)


@pytest.mark.parametrize("shape", [DIGITS, (1, 28, 28), (1, 32, 32)], ids=_id)
def test_lenet5_has_the_papers_layers_at_any_size(shape: Shape) -> None:
    model = LeNet5(shape, NUM_CLASSES)

    weights = {n: tuple(p.shape) for n, p in model.named_parameters() if n.endswith("weight")}
    assert weights == {
        "conv1.weight": (6, 1, 5, 5),
        "conv2.weight": (16, 6, 5, 5),
        "fc1.weight": (120, 16 * 5 * 5),
        "fc2.weight": (84, 120),
        "classifier.weight": (NUM_CLASSES, 84),
    }
    assert sum(p.numel() for p in model.parameters()) == 61_706  # LeNet-5 on 1x32x32


def test_resnet20_has_19_convs_option_a_shortcuts_and_one_linear() -> None:
    model = ResNet20(CIFAR, NUM_CLASSES)

    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    assert len(convs) == 19 and all(c.kernel_size == (3, 3) for c in convs)  # no 1x1 projections
    assert len(linears) == 1 and linears[0].in_features == 64
    assert [c.out_channels for c in convs] == [16] * 7 + [32] * 6 + [64] * 6
    assert sum(p.numel() for p in model.parameters()) == 269_722  # the paper's "0.27M"
