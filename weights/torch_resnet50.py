"""An independent ResNet50 in plain PyTorch, built from Keras-named weights: the tests' reference
and the network weights/train.py trains (development-only, like torch; covidx never imports it).

Written from the architecture's definition, not from covidx's code: NCHW, torch's own conv,
batchnorm (unfolded, eval mode), max pool, mean and Linear layers."""
import numpy as np
import torch
from torch import nn

STAGES = [(2, 64, 3, 1), (3, 128, 4, 2), (4, 256, 6, 2), (5, 512, 3, 2)]


class Bottleneck(nn.Module):
    def __init__(self, cin, f, stride, variant, projection, bias, eps):
        super().__init__()
        s1, s2 = (stride, 1) if variant == "v1" else (1, stride)
        self.conv1 = nn.Conv2d(cin, f, 1, s1, bias=bias)
        self.bn1 = nn.BatchNorm2d(f, eps=eps)
        self.conv2 = nn.Conv2d(f, f, 3, s2, padding=1, bias=bias)
        self.bn2 = nn.BatchNorm2d(f, eps=eps)
        self.conv3 = nn.Conv2d(f, 4 * f, 1, bias=bias)
        self.bn3 = nn.BatchNorm2d(4 * f, eps=eps)
        self.downsample = (nn.Sequential(nn.Conv2d(cin, 4 * f, 1, stride, bias=bias), nn.BatchNorm2d(4 * f, eps=eps))
                           if projection else None)

    def forward(self, x):
        y = torch.relu(self.bn1(self.conv1(x)))
        y = torch.relu(self.bn2(self.conv2(y)))
        y = self.bn3(self.conv3(y))
        return torch.relu(y + (self.downsample(x) if self.downsample is not None else x))


class TorchResNet50(nn.Module):
    """head: [(units, activation)]; pooling 'avg'. input_norm_eps: if set, each image is first
    standardised over all its pixels and channels, (x - mean) / sqrt(var + eps), as Keras's
    LayerNormalization(axis=[1, 2, 3], center=False, scale=False, epsilon=eps) does."""

    def __init__(self, variant="v1", head=(), input_norm_eps=None):
        super().__init__()
        self.input_norm_eps = input_norm_eps
        bias, eps = (True, 1.001e-5) if variant == "v1" else (False, 1e-5)
        self.conv1 = nn.Conv2d(3, 64, 7, 2, padding=3, bias=bias)
        self.bn1 = nn.BatchNorm2d(64, eps=eps)
        self.stages = nn.ModuleList()
        cin = 64
        for _, f, blocks, stride in STAGES:
            stage = nn.ModuleList()
            for b in range(blocks):
                stage.append(Bottleneck(cin, f, stride if b == 0 else 1, variant, b == 0, bias, eps))
                cin = 4 * f
            self.stages.append(stage)
        self.head = nn.ModuleList()
        self.activations = []
        for units, act in head:
            self.head.append(nn.Linear(cin, units))
            self.activations.append(act)
            cin = units

    def features(self, x):
        """x NHWC float32 -> pooled features (n, 2048)."""
        return self.feature_map(x).mean(dim=(2, 3))

    def feature_map(self, x):
        """x NHWC float32 -> the last stage's output (n, 2048, h/32, w/32), NCHW."""
        return self.stage_maps(x)[-1]

    def stage_maps(self, x):
        """x NHWC float32 -> each stage's output, NCHW: conv2 (n, 256, h/4, w/4), conv3 (512,
        h/8), conv4 (1024, h/16), conv5 (2048, h/32)."""
        if self.input_norm_eps is not None:
            mean = x.mean(dim=(1, 2, 3), keepdim=True)
            var = ((x - mean) ** 2).mean(dim=(1, 2, 3), keepdim=True)
            x = (x - mean) / torch.sqrt(var + self.input_norm_eps)
        x = x.permute(0, 3, 1, 2)
        x = torch.relu(self.bn1(self.conv1(x)))
        x = nn.functional.max_pool2d(x, 3, 2, padding=1)
        maps = []
        for stage in self.stages:
            for block in stage:
                x = block(x)
            maps.append(x)
        return maps

    def descriptor(self, x):
        """x NHWC -> covidx's descriptor (n, 28352): the pooled features, the mean and the
        (population) std of each channel after the stem's max pool and at the end of each stage,
        the last feature map on a 3x3 grid (adaptive_avg_pool2d, cell-major) and the input's 8x8
        thumbnail (the image standardised with epsilon 1e-5, averaged over channels and
        adaptive-average-pooled)."""
        mean = x.mean(dim=(1, 2, 3), keepdim=True)
        var = ((x - mean) ** 2).mean(dim=(1, 2, 3), keepdim=True)
        thumb = nn.functional.adaptive_avg_pool2d(((x - mean) / torch.sqrt(var + 1e-5)).mean(3, keepdim=True)
                                                  .permute(0, 3, 1, 2), 8).flatten(1)
        if self.input_norm_eps is not None:
            x = (x - mean) / torch.sqrt(var + self.input_norm_eps)
        x = x.permute(0, 3, 1, 2)
        x = nn.functional.max_pool2d(torch.relu(self.bn1(self.conv1(x))), 3, 2, padding=1)
        taps = [x]
        for stage in self.stages:
            for block in stage:
                x = block(x)
            taps.append(x)
        stats = [torch.cat([t.mean(dim=(2, 3)), t.std(dim=(2, 3), unbiased=False)], 1) for t in taps]
        layout = nn.functional.adaptive_avg_pool2d(x, 3).permute(0, 2, 3, 1).flatten(1)
        return torch.cat([x.mean(dim=(2, 3))] + stats + [layout, thumb], 1)

    def logits_and_output(self, x):
        return self.head_logits_and_output(self.features(x))

    def head_logits_and_output(self, x):
        """pooled features (n, 2048) -> (the last Dense layer's logits, the head's output)."""
        for i, (layer, act) in enumerate(zip(self.head, self.activations)):
            x = layer(x)
            if i == len(self.head) - 1:
                logits = x
            x = {"relu": torch.relu, "softmax": lambda t: torch.softmax(t, dim=1), "sigmoid": torch.sigmoid,
                 "linear": lambda t: t}[act](x)
        return logits, x

    def forward(self, x):
        return self.logits_and_output(x)[1]

    def keras_named_modules(self):
        """(keras layer name, module) pairs."""
        yield "conv1_conv", self.conv1
        yield "conv1_bn", self.bn1
        for (stage_id, _, _, _), stage in zip(STAGES, self.stages):
            for b, block in enumerate(stage):
                p = "conv%d_block%d_" % (stage_id, b + 1)
                for i, (conv, bn) in enumerate([(block.conv1, block.bn1), (block.conv2, block.bn2),
                                                (block.conv3, block.bn3)]):
                    yield p + "%d_conv" % (i + 1), conv
                    yield p + "%d_bn" % (i + 1), bn
                if block.downsample is not None:
                    yield p + "0_conv", block.downsample[0]
                    yield p + "0_bn", block.downsample[1]

    def keras_weights(self, head_names):
        """{'layer/weight': float32 array} in Keras's layout (HWIO kernels, (in, out) Dense)."""
        out = {}
        for name, m in self.keras_named_modules():
            if isinstance(m, nn.Conv2d):
                out[name + "/kernel"] = m.weight.detach().permute(2, 3, 1, 0).numpy().copy()
                if m.bias is not None:
                    out[name + "/bias"] = m.bias.detach().numpy().copy()
            else:
                for w, t in [("gamma", m.weight), ("beta", m.bias), ("moving_mean", m.running_mean),
                             ("moving_variance", m.running_var)]:
                    out[name + "/" + w] = t.detach().numpy().copy()
        for name, layer in zip(head_names, self.head):
            out[name + "/kernel"] = layer.weight.detach().T.numpy().copy()
            out[name + "/bias"] = layer.bias.detach().numpy().copy()
        return {k: v.astype(np.float32) for k, v in out.items()}


def calibrated_model(variant, head, seed, calibration_images, input_norm_eps=None, spread=8.0, residual_gain=1.0):
    """A TorchResNet50 with random weights and batchnorm statistics measured on calibration_images
    (NHWC float32 tensor), so activations stay in a normal range, and a last layer scaled so its
    outputs are not saturated: the logits' standard deviation over the images is 1 / spread.
    residual_gain scales the gains of the last batchnorm of each residual branch (bn3): small gains
    keep float32 error near 1e-6 through 50 layers instead of letting it grow."""
    torch.manual_seed(seed)
    model = TorchResNet50(variant, head, input_norm_eps=input_norm_eps)
    with torch.no_grad():
        for name, m in model.named_modules():
            if isinstance(m, nn.BatchNorm2d):
                m.weight.uniform_(0.5, 1.5)
                if name.endswith("bn3"):
                    m.weight.mul_(residual_gain)
                m.bias.normal_(0.0, 0.2)
                m.momentum = None  # running stats = plain average over the calibration batches
            elif isinstance(m, nn.Conv2d) and m.bias is not None:
                m.bias.normal_(0.0, 0.1)
        model.train()
        model(calibration_images)
        model.eval()
        if len(model.head):
            # A well-conditioned head, like a trained one: He-initialised hidden layers; a last
            # layer with no component along the mean of its inputs (no large common term
            # cancelling against the bias), scaled so its outputs spread with std 1 / spread and
            # centred.
            for layer in model.head:
                nn.init.kaiming_normal_(layer.weight, nonlinearity="relu")
                layer.bias.zero_()
            inputs = model.features(calibration_images)
            for layer in model.head[:-1]:
                inputs = torch.relu(layer(inputs))
            last = model.head[-1]
            mu = inputs.mean(dim=0)
            last.weight -= torch.outer(last.weight @ mu, mu) / (mu @ mu)
            logits = inputs @ last.weight.T
            scale = spread * float(logits.std()) + 1e-6
            last.weight /= scale
            last.bias.copy_(-logits.mean(dim=0) / scale)
    return model
