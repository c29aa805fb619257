"""Stage 1 of the shipped COVID-19 model (development-only; needs torch==2.13.0, not needed to run
covidx): the whole network, trained from scratch in PyTorch. weights/make_model.sh runs all stages.

Architecture: Keras ResNet50 v1 + GlobalAveragePooling2D + Dense(1024, relu) x3 + Dense(512, relu)
+ Dense(2, softmax), classes ('COV19', 'Normal'); input RGB 224x224 scaled by 1/255, exactly what
ImageDataGenerator(rescale=1./255).flow_from_directory(..., target_size=(224, 224)) yields.
ImageNet weights cannot be fetched here, so the whole network is trained from scratch.

The network is the plain PyTorch ResNet50 that the tests use as their independent reference
(tests/torch_reference.py), so its Keras-named weights load into covidx as they are.

    python weights/train.py --data ../shared/data/cxr/covid19-radiography/train \
        --out weights/covid_resnet50.safetensors

Recipe (fixed seed): 10% of the training folder (stratified) is held out for monitoring; the test
split is never read. AdamW, one-cycle learning rate, label smoothing, decoupled weight decay,
zero-initialised last batchnorm of each block. Geometric and photometric augmentation
(rotation, scale, aspect ratio, shift, shear, contrast, brightness, gamma, blur, noise, border fill)
so that the model sees images unlike the training hospitals'. Progressive resizing: most epochs at
a lower resolution (cheaper on a CPU), the last ones at 224x224. The batchnorm statistics are
re-estimated at 224x224 on un-augmented training images before export.
"""
import argparse
import json
import math
import os
import sys
import time

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "tests"))
from torch_reference import TorchResNet50  # noqa: E402

CLASSES = ("COV19", "Normal")
HEAD = [(1024, "relu"), (1024, "relu"), (1024, "relu"), (512, "relu"), (2, "softmax")]
HEAD_NAMES = ["dense", "dense_1", "dense_2", "dense_3", "dense_4"]


def load_folder(root):
    """uint8 (n, 224, 224, 3) images and int labels, read the way flow_from_directory reads them."""
    from covidx.preprocessing.image import img_to_array, load_img

    xs, ys, names = [], [], []
    for label, cls in enumerate(CLASSES):
        d = os.path.join(root, cls)
        for f in sorted(os.listdir(d)):
            img = load_img(os.path.join(d, f), color_mode="rgb", target_size=(224, 224))
            xs.append(img_to_array(img, dtype="uint8"))
            ys.append(label)
            names.append(os.path.join(cls, f))
    return np.stack(xs), np.array(ys, dtype=np.int64), names


def holdout_mask(y, seed):
    """The held-out tenth of each class (True), drawn with the recipe's seed."""
    rng = np.random.default_rng(seed)
    val = np.zeros(len(y), bool)
    for c in range(len(CLASSES)):
        idx = np.flatnonzero(y == c)
        val[rng.choice(idx, size=len(idx) // 10, replace=False)] = True
    return val


def augment(x, size, gen, strength=1.0):
    """x: (n, 3, 224, 224) float in [0, 1] -> (n, 3, size, size), randomly transformed; strength
    scales every range."""
    n, k = x.shape[0], strength

    def u(lo, hi):
        return torch.rand(n, generator=gen) * (hi - lo) + lo

    angle = u(-12 * k, 12 * k) * math.pi / 180
    scale = torch.exp(u(math.log(1 - 0.2 * k), math.log(1 + 0.2 * k)))
    aspect = torch.exp(u(-0.22 * k, 0.22 * k))
    shear = u(-0.1 * k, 0.1 * k)
    tx, ty = u(-0.1 * k, 0.1 * k), u(-0.1 * k, 0.1 * k)
    sx, sy = scale * torch.sqrt(aspect), scale / torch.sqrt(aspect)
    cos, sin = torch.cos(angle), torch.sin(angle)
    # theta maps output coordinates to input coordinates (normalised to [-1, 1]).
    theta = torch.zeros(n, 2, 3)
    theta[:, 0, 0] = cos / sx
    theta[:, 0, 1] = (-sin + shear) / sx
    theta[:, 1, 0] = sin / sy
    theta[:, 1, 1] = cos / sy
    theta[:, 0, 2] = tx
    theta[:, 1, 2] = ty
    grid = F.affine_grid(theta, (n, 3, size, size), align_corners=False)
    mode = "nearest" if torch.rand(1, generator=gen).item() < 0.3 else "bilinear"
    pad = "zeros" if torch.rand(1, generator=gen).item() < 0.5 else "border"
    y = F.grid_sample(x, grid, mode=mode, padding_mode=pad, align_corners=False)
    # Photometric: gamma, contrast around the image mean, brightness, slight channel tint.
    gamma = torch.exp(u(-0.47 * k, 0.47 * k)).view(n, 1, 1, 1)
    y = y.clamp(0, 1) ** gamma
    mean = y.mean(dim=(1, 2, 3), keepdim=True)
    y = (y - mean) * u(1 - 0.4 * k, 1 + 0.4 * k).view(n, 1, 1, 1) + mean + u(-0.12 * k, 0.12 * k).view(n, 1, 1, 1)
    y = y * (1 + 0.04 * k * (torch.rand(n, 3, 1, 1, generator=gen) - 0.5))
    # Blur some images, add noise to some others.
    blur = torch.rand(n, generator=gen) < 0.25 * k
    if blur.any():
        taps = torch.tensor([0.25, 0.5, 0.25])
        kernel = (taps[:, None] * taps[None, :]).expand(3, 1, 3, 3)
        y[blur] = F.conv2d(F.pad(y[blur], (1, 1, 1, 1), mode="replicate"), kernel, groups=3)
    noisy = (torch.rand(n, generator=gen) < 0.25 * k).view(n, 1, 1, 1)
    y = y + noisy * torch.randn(y.shape, generator=gen) * 0.03
    return y.clamp(0, 1)


def build_model(seed):
    torch.manual_seed(seed)
    model = TorchResNet50("v1", HEAD)
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Linear):
            nn.init.kaiming_normal_(m.weight, nonlinearity="relu")
            nn.init.zeros_(m.bias)
    for stage in model.stages:
        for block in stage:
            nn.init.zeros_(block.bn3.weight)  # each block starts as the identity
    return model


def load_keras_weights(model, named):
    """The inverse of TorchResNet50.keras_weights: Keras-named arrays into the torch modules."""
    with torch.no_grad():
        for name, m in model.keras_named_modules():
            if isinstance(m, nn.Conv2d):
                m.weight.copy_(torch.from_numpy(np.asarray(named[name + "/kernel"], np.float32)).permute(3, 2, 0, 1))
                if m.bias is not None:
                    m.bias.copy_(torch.from_numpy(np.asarray(named[name + "/bias"], np.float32)))
            else:
                for w, t in [("gamma", m.weight), ("beta", m.bias), ("moving_mean", m.running_mean),
                             ("moving_variance", m.running_var)]:
                    t.copy_(torch.from_numpy(np.asarray(named[name + "/" + w], np.float32)))
        for name, layer in zip(HEAD_NAMES, model.head):
            layer.weight.copy_(torch.from_numpy(np.asarray(named[name + "/kernel"], np.float32)).T)
            layer.bias.copy_(torch.from_numpy(np.asarray(named[name + "/bias"], np.float32)))


def logits(model, x_nchw):
    return model.logits_and_output(x_nchw.permute(0, 2, 3, 1))[0]


def evaluate(model, x, y, batch=64):
    model.eval()
    correct, loss = 0, 0.0
    with torch.no_grad():
        for i in range(0, len(x), batch):
            xb = torch.from_numpy(x[i:i + batch]).permute(0, 3, 1, 2).float() / 255
            lg = logits(model, xb)
            yb = torch.from_numpy(y[i:i + batch])
            loss += float(F.cross_entropy(lg, yb, reduction="sum"))
            correct += int((lg.argmax(1) == yb).sum())
    return loss / len(x), correct / len(x)


def recalibrate_bn(model, x, batch=64, gen=None):
    """Re-estimates batchnorm statistics at 224x224 on un-augmented images (training ran mostly at
    lower resolution and on augmented images)."""
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.reset_running_stats()
            m.momentum = None  # cumulative average
    model.train()
    order = torch.randperm(len(x), generator=gen).numpy()
    with torch.no_grad():
        for i in range(0, len(x), batch):
            xb = torch.from_numpy(x[order[i:i + batch]]).permute(0, 3, 1, 2).float() / 255
            logits(model, xb)
    model.eval()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--epochs", type=int, default=7)
    ap.add_argument("--full-res-epochs", type=int, default=0, help="final epochs at 224x224")
    ap.add_argument("--low-res", type=int, default=112)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--weight-decay", type=float, default=0.05)
    ap.add_argument("--augment", type=float, default=0.6, help="augmentation strength (1: widest ranges)")
    ap.add_argument("--seed", type=int, default=20210101)
    ap.add_argument("--threads", type=int, default=os.cpu_count())
    ap.add_argument("--time-steps", type=int, default=0, help="only time this many steps")
    ap.add_argument("--init", help="start from this covidx model file (a later stage) instead of from scratch")
    ap.add_argument("--warmup", type=float, default=0.1, help="fraction of the steps spent warming up")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    t_start = time.time()

    x, y, names = load_folder(args.data)
    val = holdout_mask(y, args.seed)
    xtr, ytr, xva, yva = x[~val], y[~val], x[val], y[val]
    print("train %d, held out %d (%s)" % (len(ytr), len(yva), dict(zip(CLASSES, np.bincount(ytr)))), flush=True)

    model = build_model(args.seed)
    if args.init:
        import covidx

        load_keras_weights(model, covidx.load_model(args.init).named_weights)
    model = model.to(memory_format=torch.channels_last)
    decay = [p for n, p in model.named_parameters() if p.ndim > 1]
    no_decay = [p for n, p in model.named_parameters() if p.ndim <= 1]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": args.weight_decay},
                             {"params": no_decay, "weight_decay": 0}], lr=args.lr)
    steps_per_epoch = len(ytr) // args.batch
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=args.lr, epochs=args.epochs,
                                                steps_per_epoch=steps_per_epoch, pct_start=args.warmup)
    gen = torch.Generator().manual_seed(args.seed)
    log = []
    for epoch in range(args.epochs):
        size = 224 if epoch >= args.epochs - args.full_res_epochs else args.low_res
        model.train()
        perm = torch.randperm(len(ytr), generator=gen).numpy()
        t0, tot, correct = time.time(), 0.0, 0
        for s in range(steps_per_epoch):
            idx = perm[s * args.batch:(s + 1) * args.batch]
            xb = torch.from_numpy(xtr[idx]).permute(0, 3, 1, 2).float() / 255
            xb = augment(xb, size, gen, args.augment).contiguous(memory_format=torch.channels_last)
            yb = torch.from_numpy(ytr[idx])
            lg = logits(model, xb)
            loss = F.cross_entropy(lg, yb, label_smoothing=0.1)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            tot += float(loss.detach()) * len(idx)
            correct += int((lg.argmax(1) == yb).sum())
            if args.time_steps and s + 1 >= args.time_steps:
                print("size %d: %.2f s/step" % (size, (time.time() - t0) / (s + 1)))
                return
        vloss, vacc = evaluate(model, xva, yva)
        n = steps_per_epoch * args.batch
        rec = {"epoch": epoch + 1, "size": size, "loss": tot / n, "acc": correct / n, "val_loss": vloss,
               "val_acc": vacc, "seconds": round(time.time() - t0, 1)}
        log.append(rec)
        print(json.dumps(rec), flush=True)

    recalibrate_bn(model, xtr, gen=gen)
    vloss, vacc = evaluate(model, xva, yva)
    print("after batchnorm re-estimation at 224: val_loss %.4f val_acc %.4f" % (vloss, vacc), flush=True)

    import covidx
    from covidx.applications.resnet50 import ResNet50

    net = ResNet50(weights=None, classes=2, head=[u for u, _ in HEAD[:-1]], class_names=list(CLASSES),
                   preprocessing={"rescale": 1 / 255}, name="covid_resnet50")
    named = model.keras_weights(HEAD_NAMES)
    net.set_weights([named[k] for k in net._weight_keys()])
    net.save(args.out, dtype="float16")
    # The exported file must reproduce PyTorch's held-out predictions.
    back = covidx.load_model(args.out)
    p_cx = back.predict(xva.astype(np.float32) / 255)
    with torch.no_grad():
        p_t = torch.softmax(logits(model, torch.from_numpy(xva).permute(0, 3, 1, 2).float() / 255), 1).numpy()
    print("covidx vs torch on held-out images: max |prob diff| %.2e, same class %.4f"
          % (np.abs(p_cx - p_t).max(), np.mean(p_cx.argmax(1) == p_t.argmax(1))))
    minutes = (time.time() - t_start) / 60
    with open(os.path.splitext(args.out)[0] + ".train-log.json", "w") as f:
        json.dump({"args": vars(args), "epochs": log, "final_val_loss": vloss, "final_val_acc": vacc,
                   "minutes": round(minutes, 1), "torch": torch.__version__, "cpu_threads": args.threads}, f,
                  indent=1)
    print("done in %.1f min" % minutes)


if __name__ == "__main__":
    main()
