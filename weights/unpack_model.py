"""A shipped covidx model file back to train.py's weights (development-only; needs torch): the
start of a continued training run (train.py --init) when the earlier run's final.pt is not at hand.

The Keras-named tensors go back into the PyTorch network of train.py (HWIO kernels -> OIHW, (in,
out) Dense -> (out, in)), in float32 (the file stores float16), and the calibration temperature
that package_model.py folded into the last Dense layer is taken out again (kernel * T, bias * T),
so that training continues from the network's own logits.

    python weights/unpack_model.py weights/covid_resnet50.safetensors /tmp/covidx-train/shipped.pt
"""
import json
import os
import sys

import numpy as np

from covidx import safetensors_io
from covidx.calibration import unfold_temperature

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import train  # noqa: E402


def unpack(path):
    import torch
    from torch import nn

    tensors, meta = safetensors_io.load(path)  # the file's checked reader; float16 arrays
    calibration = json.loads(meta.get("calibration", "{}"))
    t = float(calibration.get("temperature", 1.0))
    tensors = unfold_temperature(tensors, calibration) or tensors
    net = train.build_model(0)
    with torch.no_grad():
        for name, m in net.keras_named_modules():
            if isinstance(m, nn.Conv2d):
                m.weight.copy_(torch.from_numpy(tensors[name + "/kernel"].astype(np.float32)).permute(3, 2, 0, 1))
                if m.bias is not None:
                    m.bias.copy_(torch.from_numpy(tensors[name + "/bias"].astype(np.float32)))
            else:
                for w, dst in [("gamma", m.weight), ("beta", m.bias), ("moving_mean", m.running_mean),
                               ("moving_variance", m.running_var)]:
                    dst.copy_(torch.from_numpy(tensors[name + "/" + w].astype(np.float32)))
        for name, layer in zip(train.HEAD_NAMES, net.head):
            layer.weight.copy_(torch.from_numpy(tensors[name + "/kernel"].astype(np.float32)).T)
            layer.bias.copy_(torch.from_numpy(tensors[name + "/bias"].astype(np.float32)))
    return net, t


def main():
    import torch

    src, dst = sys.argv[1], sys.argv[2]
    net, t = unpack(src)
    os.makedirs(os.path.dirname(os.path.abspath(dst)), exist_ok=True)
    torch.save({"state": net.state_dict(), "chosen": "unpacked from %s (temperature %.4f unfolded)"
                % (os.path.basename(src), t)}, dst)
    print("wrote %s (temperature %.4f unfolded)" % (dst, t))


if __name__ == "__main__":
    main()
