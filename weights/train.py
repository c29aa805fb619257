"""Stage 1 of the shipped COVID-19 model (development-only; needs torch==2.13.0, not needed to run
covidx): the whole network, trained from scratch in PyTorch. weights/make_model.sh runs all stages.

Architecture: per-image standardisation of the input (Keras's LayerNormalization over height,
width and channels, no weights) + Keras ResNet50 v1 + GlobalAveragePooling2D + Dense(1024, relu) x3
+ Dense(512, relu) + Dense(2, softmax), classes ('COV19', 'Normal'); input RGB 224x224 scaled by
1/255, exactly what ImageDataGenerator(rescale=1./255).flow_from_directory(..., target_size=(224,
224)) yields. ImageNet weights cannot be fetched here, so the whole network is trained from scratch.

The network is the plain PyTorch ResNet50 that the tests use as their independent reference
(weights/torch_resnet50.py), so its Keras-named weights load into covidx as they are.

    python weights/train.py --data ../shared/data/cxr/covid19-radiography/train \
        --data ../shared/data/cxr/covid19-radiography/train-extra --work /tmp/covidx-train

What the model must not learn is the source of an image rather than the disease. In the training
folders COVID-19 and Normal images come from different hospitals and processing (the normals are
darker and higher in contrast), and users feed it full-resolution files resized with Keras's
default nearest-neighbour resampling. So:
- the input is standardised per image (exact invariance to brightness and contrast), and
- augmentation covers what does not carry the disease: tone curves (gamma, windowing, S-curves,
  histogram equalisation), resampling paths (area, bilinear, nearest; blur, sharpening, noise),
  geometry (rotation, zoom, crop, shift, shear, aspect, mirror), borders and text markers.

Recipe (fixed seed): 10% of the training images (stratified) are held out (monitoring here;
temperature and the out-of-distribution threshold later); the measuring sets are never read.
AdamW, one learning-rate cycle over all epochs (warm-up, cosine decay), label smoothing,
decoupled weight decay, zero-initialised last batchnorm of each block, an exponential moving
average of the weights. Progressive resizing (--schedule): most epochs at low resolution (cheap
on a CPU), the last ones at 224x224; then the batchnorm statistics are re-estimated at 224x224 on
un-augmented training images. A checkpoint is written after every epoch and --resume continues
from it, so a long run survives an interruption.

--teacher distils a network fine-tuned by teacher.py (an ImageNet EfficientNet-Lite): it labels
the student's own augmented view (soft targets at --kd-temperature, --kd-weight of the loss), with
--mixup mixing batches so that it labels views between the training images too, and
--hint-weight asking the student's last feature map to carry the teacher's (through a learned 1x1
convolution, dropped after training): what the teacher sees, not only its two logits;
--mid-hint-weight asks the same of conv4's output (stride 16) and the teacher's map at stride 16,
--early-hint-weight of conv3's output (stride 8) and the teacher's map at stride 8.
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
sys.path.insert(0, HERE)
from torch_resnet50 import TorchResNet50  # noqa: E402

CLASSES = ("COV19", "Normal")
HEAD = [(1024, "relu"), (1024, "relu"), (1024, "relu"), (512, "relu"), (2, "softmax")]
HEAD_NAMES = ["dense", "dense_1", "dense_2", "dense_3", "dense_4"]
INPUT_NORM_EPS = 1e-5
# Feature hints by stride: which of TorchResNet50.stage_maps the teacher's map at that stride
# teaches (--hint-weight: conv5, the last feature map; --mid-hint-weight: conv4;
# --early-hint-weight: conv3).
HINT_STAGES = {32: 3, 16: 2, 8: 1}


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


def load_folders(roots):
    parts = [load_folder(r) for r in roots]
    return (np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts]),
            [os.path.join(os.path.basename(os.path.normpath(r)), n) for r, p in zip(roots, parts) for n in p[2]])


def holdout_mask(y, seed):
    """The held-out tenth of each class (True), drawn with the recipe's seed."""
    rng = np.random.default_rng(seed)
    val = np.zeros(len(y), bool)
    for c in range(len(CLASSES)):
        idx = np.flatnonzero(y == c)
        val[rng.choice(idx, size=len(idx) // 10, replace=False)] = True
    return val


# ---------------------------------------------------------------------------------------------
# Augmentation. x: (n, 3, 224, 224) float in [0, 1]; every function returns values in [0, 1].

def _u(n, lo, hi, gen):
    return torch.rand(n, generator=gen) * (hi - lo) + lo


def _chance(n, p, gen):
    return torch.rand(n, generator=gen) < p


def geometry(x, size, gen):
    """Rotation, zoom, aspect, shear, shift and mirror, resampled to size x size along one of the
    resampling paths real files take (area-averaged, bilinear, or nearest neighbour as Keras's
    default load_img resize)."""
    n = x.shape[0]
    angle = _u(n, -10, 10, gen) * math.pi / 180
    scale = torch.exp(_u(n, math.log(0.8), math.log(1.25), gen))  # > 1 zooms in (a crop)
    aspect = torch.exp(_u(n, -0.12, 0.12, gen))
    shear = _u(n, -0.08, 0.08, gen)
    tx, ty = _u(n, -0.08, 0.08, gen), _u(n, -0.08, 0.08, gen)
    flip = torch.where(_chance(n, 0.5, gen), -1.0, 1.0)
    sx, sy = scale * torch.sqrt(aspect), scale / torch.sqrt(aspect)
    cos, sin = torch.cos(angle), torch.sin(angle)
    # theta maps output coordinates to input coordinates (normalised to [-1, 1]).
    theta = torch.zeros(n, 2, 3)
    theta[:, 0, 0] = flip * cos / sx
    theta[:, 0, 1] = (-sin + shear) / sx
    theta[:, 1, 0] = flip * sin / sy
    theta[:, 1, 1] = cos / sy
    theta[:, 0, 2] = tx
    theta[:, 1, 2] = ty
    path = torch.rand(1, generator=gen).item()
    if path < 0.35 and size < x.shape[-1]:
        # area-average first (an anti-aliased downscale), then a mild bilinear warp
        x = F.interpolate(x, size=(size, size), mode="area")
        mode = "bilinear"
    else:
        mode = "nearest" if path < 0.7 else "bilinear"
    fill = torch.rand(1, generator=gen).item()
    pad = "zeros" if fill < 0.5 else "border"
    grid = F.affine_grid(theta, (n, 3, size, size), align_corners=False)
    return F.grid_sample(x, grid, mode=mode, padding_mode=pad, align_corners=False).clamp(0, 1)


def equalize(x):
    """Histogram equalisation of each image over 256 levels (all channels together, one mapping,
    so grey stays grey): each level -> the mid-point of its cumulative frequency."""
    n = x.shape[0]
    q = (x.reshape(n, -1) * 255).round().long().clamp(0, 255)
    hist = torch.zeros(n, 256).scatter_add_(1, q, torch.ones(q.shape))
    cdf = hist.cumsum(1)
    mid = (cdf - hist / 2) / q.shape[1]
    return torch.gather(mid, 1, q).reshape(x.shape)


def tone(x, gen):
    """A random monotone tone curve per image: windowing, gamma, S-curve, equalisation, then a
    linear brightness/contrast change and a slight channel tint (the input standardisation makes
    the linear part exact; it still moves where values clip)."""
    n = x.shape[0]
    view = (n, 1, 1, 1)
    win = _chance(n, 0.4, gen).view(view)
    lo, hi = _u(n, 0.0, 0.2, gen).view(view), _u(n, 0.8, 1.0, gen).view(view)
    x = torch.where(win, ((x - lo) / (hi - lo)).clamp(0, 1), x)
    gamma = torch.exp(_u(n, math.log(0.5), math.log(2.0), gen)).view(view)
    x = x.clamp(0, 1) ** gamma
    s = _chance(n, 0.3, gen).view(view)
    k = _u(n, 3, 8, gen).view(view)
    c = _u(n, 0.35, 0.65, gen).view(view)
    lo_s, hi_s = torch.sigmoid(-k * c), torch.sigmoid(k * (1 - c))
    x = torch.where(s, (torch.sigmoid(k * (x - c)) - lo_s) / (hi_s - lo_s), x)
    eq = _chance(n, 0.15, gen)
    if eq.any():
        x[eq] = equalize(x[eq])
    mean = x.mean(dim=(1, 2, 3), keepdim=True)
    x = (x - mean) * _u(n, 0.75, 1.3, gen).view(view) + mean + _u(n, -0.1, 0.1, gen).view(view)
    x = x * (1 + 0.04 * (torch.rand(n, 3, 1, 1, generator=gen) - 0.5))
    return x.clamp(0, 1)


def texture(x, gen):
    """Blur or sharpen some images and add noise to others: the fine texture that differs between
    a pre-resized file and a full-resolution one read with nearest-neighbour resampling."""
    n = x.shape[0]
    taps = torch.tensor([0.25, 0.5, 0.25])
    kernel = (taps[:, None] * taps[None, :]).expand(3, 1, 3, 3).contiguous()
    blurred = F.conv2d(F.pad(x, (1, 1, 1, 1), mode="replicate"), kernel, groups=3)
    r = torch.rand(n, generator=gen).view(n, 1, 1, 1)
    amount = _u(n, 0.5, 1.5, gen).view(n, 1, 1, 1)
    x = torch.where(r < 0.2, blurred, torch.where(r < 0.4, x + amount * (x - blurred), x))
    noisy = _chance(n, 0.3, gen).view(n, 1, 1, 1)
    sigma = _u(n, 0.005, 0.04, gen).view(n, 1, 1, 1)
    grain = torch.randn(n, 1, x.shape[2], x.shape[3], generator=gen)  # grey noise, as in grey films
    return (x + noisy * sigma * grain).clamp(0, 1)


def borders_and_markers(x, gen):
    """Black or white bands on some sides (scanner borders, crops) and small bright rectangles
    (text and laterality markers) at random places."""
    n, _, h, w = x.shape
    for i in range(n):
        if torch.rand(1, generator=gen).item() < 0.2:
            value = 0.0 if torch.rand(1, generator=gen).item() < 0.7 else 1.0
            for side in range(4):
                if torch.rand(1, generator=gen).item() < 0.5:
                    b = int(torch.randint(1, max(2, h // 8), (1,), generator=gen))
                    if side == 0:
                        x[i, :, :b] = value
                    elif side == 1:
                        x[i, :, -b:] = value
                    elif side == 2:
                        x[i, :, :, :b] = value
                    else:
                        x[i, :, :, -b:] = value
        if torch.rand(1, generator=gen).item() < 0.3:
            for _ in range(int(torch.randint(1, 4, (1,), generator=gen))):
                mh = int(torch.randint(max(2, h // 40), max(3, h // 12), (1,), generator=gen))
                mw = int(torch.randint(max(2, w // 40), max(3, w // 8), (1,), generator=gen))
                top = int(torch.randint(0, h - mh, (1,), generator=gen))
                left = int(torch.randint(0, w - mw, (1,), generator=gen))
                x[i, :, top:top + mh, left:left + mw] = _u(1, 0.75, 1.0, gen).item()
    return x


def augment(x, size, gen):
    """x: (n, 3, 224, 224) float in [0, 1] -> (n, 3, size, size), randomly transformed."""
    x = geometry(x, size, gen)
    x = tone(x, gen)
    x = texture(x, gen)
    return borders_and_markers(x, gen)


# ---------------------------------------------------------------------------------------------

def build_model(seed):
    torch.manual_seed(seed)
    model = TorchResNet50("v1", HEAD, input_norm_eps=INPUT_NORM_EPS)
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


def logits(model, x_nchw):
    return model.logits_and_output(x_nchw.permute(0, 2, 3, 1))[0]


def to_float(x_uint8):
    return torch.from_numpy(x_uint8).permute(0, 3, 1, 2).float() / 255


def evaluate(model, x, y, size=224, batch=64, calibrated=False):
    """(held-out loss, accuracy) at size x size; with calibrated=True also the loss after the
    temperature that package_model.py will fit on these images (covidx.calibration), and T."""
    model.eval()
    out = []
    with torch.no_grad():
        for i in range(0, len(x), batch):
            xb = to_float(x[i:i + batch])
            if size != 224:
                xb = F.interpolate(xb, size=(size, size), mode="area")
            out.append(logits(model, xb.contiguous(memory_format=torch.channels_last)).double())
    lg = torch.cat(out)
    yt = torch.from_numpy(y)
    loss, acc = float(F.cross_entropy(lg, yt)), float((lg.argmax(1) == yt).double().mean())
    if not calibrated:
        return loss, acc
    from covidx.calibration import fit_temperature, nll

    t = fit_temperature(lg.numpy(), y)
    return loss, acc, nll(lg.numpy(), y, t), t


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
            logits(model, to_float(x[order[i:i + batch]]).contiguous(memory_format=torch.channels_last))
    model.eval()


def parse_schedule(text):
    """'96:8,160:5,224:3' -> [96]*8 + [160]*5 + [224]*3."""
    sizes = []
    for part in text.split(","):
        size, epochs = part.split(":")
        sizes += [int(size)] * int(epochs)
    return sizes


def adamw(net, lr, weight_decay):
    """AdamW with decoupled weight decay on the kernels and Dense weights only (no decay on biases
    and batchnorm parameters): the optimizer of this script and of teacher.py."""
    decay = [p for p in net.parameters() if p.ndim > 1]
    no_decay = [p for p in net.parameters() if p.ndim <= 1]
    return torch.optim.AdamW([{"params": decay, "weight_decay": weight_decay},
                              {"params": no_decay, "weight_decay": 0}], lr=lr)


def training_batch(x, y, idx, size, gen):
    """The augmented views of images x[idx] at size x size (NCHW, channels_last) and their labels:
    one training step's batch, here and in teacher.py."""
    xb = augment(to_float(x[idx]), size, gen).contiguous(memory_format=torch.channels_last)
    return xb, torch.from_numpy(y[idx])


def set_learning_rate(opt, step, total, peak, warmup):
    for g in opt.param_groups:
        g["lr"] = learning_rate(step, total, peak, warmup)


def save_atomic(obj, path):
    """torch.save through a temporary file, so an interrupted write never leaves half a checkpoint."""
    torch.save(obj, path + ".tmp")
    os.replace(path + ".tmp", path)


def resume(path, parts, gen):
    """A checkpoint written with save_atomic back into parts ({key: a module or an optimizer}) and
    the generator; returns (the epochs' log, how many epochs it holds)."""
    state = torch.load(path, weights_only=True)
    for key, part in parts.items():
        part.load_state_dict(state[key])
    gen.set_state(state["gen"])
    return json.loads(state["log"]), int(state["epoch"])


def learning_rate(step, total, peak, warmup):
    """Linear warm-up, then cosine decay to 1% of the peak."""
    w = max(1, int(total * warmup))
    if step < w:
        return peak * (step + 1) / w
    t = (step - w) / max(1, total - w)
    return peak * (0.01 + 0.99 * 0.5 * (1 + math.cos(math.pi * t)))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", action="append", required=True, help="a training folder (repeatable)")
    ap.add_argument("--work", required=True, help="folder for the checkpoint, the log and the final weights")
    ap.add_argument("--schedule", default="96:8,160:5,224:3", help="size:epochs,... (progressive resizing)")
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--warmup", type=float, default=0.05, help="fraction of the steps spent warming up")
    ap.add_argument("--weight-decay", type=float, default=0.05)
    ap.add_argument("--label-smoothing", type=float, default=0.05)
    ap.add_argument("--ema", type=float, default=0.998, help="decay of the weights' moving average per step")
    ap.add_argument("--bn-images", type=int, default=1536, help="training images for the 224x224 batchnorm "
                    "re-estimation")
    ap.add_argument("--seed", type=int, default=20210101)
    ap.add_argument("--threads", type=int, default=os.cpu_count())
    ap.add_argument("--resume", action="store_true", help="continue from the checkpoint in --work")
    ap.add_argument("--init", help="start from these weights (an earlier stage's final.pt) instead of from scratch")
    ap.add_argument("--stop-after", type=int, default=0, help="end after this many epochs, with their checkpoint "
                    "(continue with --resume, perhaps with a shorter --schedule)")
    ap.add_argument("--time-steps", type=int, default=0, help="only time this many steps at each size")
    ap.add_argument("--teacher", help="distil this teacher (weights/teacher.py's final.pt): it labels the same "
                    "augmented view the student sees")
    ap.add_argument("--kd-weight", type=float, default=0.8, help="share of the teacher's soft targets in the loss "
                    "(the rest: the hard labels)")
    ap.add_argument("--kd-temperature", type=float, default=2.0)
    ap.add_argument("--hint-weight", type=float, default=0.0, help="weight of a feature hint: the student's last "
                    "feature map, through a learned 1x1 convolution, matches the teacher's (squared error over the "
                    "teacher's mean square); the hint carries what the teacher sees, not just its two logits")
    ap.add_argument("--mid-hint-weight", type=float, default=0.0, help="weight of a second hint: conv4's output "
                    "(1024 channels, stride 16), through its own learned 1x1 convolution, matches the teacher's "
                    "stride-16 map (its last block at that resolution), measured the same way")
    ap.add_argument("--early-hint-weight", type=float, default=0.0, help="weight of a third hint: conv3's output "
                    "(512 channels, stride 8) against the teacher's stride-8 map, measured the same way")
    ap.add_argument("--teacher-size", type=int, default=0, help="the teacher labels the view resized (bilinear) to "
                    "this size, the size it was trained at; 0: at the view's own size")
    ap.add_argument("--bf16", action="store_true", help="bfloat16 autocast for the student's and the teacher's "
                    "forward passes (weights, optimizer and loss stay float32; about 2.3x faster per step on CPUs "
                    "with AVX512_BF16 or AMX); evaluation and the batchnorm re-estimation stay float32")
    ap.add_argument("--mixup", type=float, default=0.0, help="chance that a batch is mixed with a shuffled copy of "
                    "itself (weight uniform in [0, 1]): views between the training images for the teacher to label")
    ap.add_argument("--select", choices=["loss", "calibrated-loss"], default="loss", help="what picks the final "
                    "weights among the candidates: the held-out loss at 224x224, or that loss after the "
                    "temperature package_model.py fits on the same images (the shipped outputs are calibrated)")
    ap.add_argument("--keep-training-bn", action="store_true", help="also offer the trained weights with the "
                    "batchnorm statistics they were trained with (no re-estimation) to the held-out choice")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    os.makedirs(args.work, exist_ok=True)
    ckpt_path = os.path.join(args.work, "checkpoint.pt")
    t_start = time.time()

    x, y, names = load_folders(args.data)
    val = holdout_mask(y, args.seed)
    xtr, ytr, xva, yva = x[~val], y[~val], x[val], y[val]
    print("train %d, held out %d (%s)" % (len(ytr), len(yva), dict(zip(CLASSES, np.bincount(ytr).tolist()))),
          flush=True)

    teacher = None
    if args.teacher:
        from teacher import evaluate as teacher_evaluate, load_teacher  # torch-only helper beside this file

        teacher = load_teacher(args.teacher)
        tloss, tacc = teacher_evaluate(teacher, xva, yva)
        print("teacher %s: val_loss %.4f val_acc %.4f" % (args.teacher, tloss, tacc), flush=True)

    sizes = parse_schedule(args.schedule)
    steps_per_epoch = len(ytr) // args.batch
    total_steps = steps_per_epoch * len(sizes)
    model = build_model(args.seed).to(memory_format=torch.channels_last)
    ema = build_model(args.seed).to(memory_format=torch.channels_last)
    if args.init:
        model.load_state_dict(torch.load(args.init, weights_only=True)["state"])
    ema.load_state_dict(model.state_dict())
    # Hints, by stride: a learned 1x1 convolution from the student's stage output to the teacher's
    # map's channels (stride 32: 2048 -> 1280 for Lite0-2; stride 16: 1024 -> Lite2's 120;
    # stride 8: 512 -> Lite2's 48).
    adapters = nn.ModuleDict()
    hint_weights = {32: args.hint_weight, 16: args.mid_hint_weight, 8: args.early_hint_weight}
    for stride, stage in HINT_STAGES.items():
        if hint_weights[stride]:
            if teacher is None:
                ap.error("--hint-weight, --mid-hint-weight and --early-hint-weight need --teacher")
            with torch.no_grad():
                probe = teacher.maps_and_logits(torch.zeros(1, 3, 64, 64))[0][stride]
            student_channels = model.stages[stage][-1].conv3.out_channels
            adapters[str(stride)] = nn.Conv2d(student_channels, probe.shape[1], 1).to(
                memory_format=torch.channels_last)
    opt = adamw(nn.ModuleList([model, adapters]), args.lr, args.weight_decay)
    gen = torch.Generator().manual_seed(args.seed)
    log, first_epoch = [], 0
    if args.resume and os.path.exists(ckpt_path):
        parts = {"model": model, "ema": ema, "opt": opt, **({"adapters": adapters} if len(adapters) else {})}
        log, first_epoch = resume(ckpt_path, parts, gen)
        print("resumed after epoch %d" % first_epoch, flush=True)

    for epoch in range(first_epoch, len(sizes)):
        size = sizes[epoch]
        model.train()
        perm = torch.randperm(len(ytr), generator=gen).numpy()
        t0, tot, correct, hint_tot = time.time(), 0.0, 0, {s: 0.0 for s in adapters}
        for s in range(steps_per_epoch):
            step = epoch * steps_per_epoch + s
            set_learning_rate(opt, step, total_steps, args.lr, args.warmup)
            idx = perm[s * args.batch:(s + 1) * args.batch]
            xb, yb = training_batch(xtr, ytr, idx, size, gen)
            lam, other = 1.0, yb
            if args.mixup and torch.rand(1, generator=gen).item() < args.mixup:
                lam = torch.rand(1, generator=gen).item()
                j = torch.randperm(len(idx), generator=gen)
                xb, other = lam * xb + (1 - lam) * xb[j], yb[j]
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=args.bf16):
                maps = model.stage_maps(xb.permute(0, 2, 3, 1))  # logits() in steps: the hints read the maps
                lg = model.head_logits_and_output(maps[-1].mean(dim=(2, 3)))[0].float()
            loss = (lam * F.cross_entropy(lg, yb, label_smoothing=args.label_smoothing)
                    + (1 - lam) * F.cross_entropy(lg, other, label_smoothing=args.label_smoothing))
            if teacher is not None:
                t = args.kd_temperature
                with torch.no_grad():
                    view = xb
                    if args.teacher_size and xb.shape[-1] != args.teacher_size:
                        view = F.interpolate(xb, size=(args.teacher_size, args.teacher_size), mode="bilinear",
                                             align_corners=False).contiguous(memory_format=torch.channels_last)
                    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=args.bf16):
                        tmaps, tlg = teacher.maps_and_logits(view)
                        soft = F.softmax(tlg.float() / t, dim=1)
                kd = F.kl_div(F.log_softmax(lg / t, dim=1), soft, reduction="batchmean") * t * t
                loss = args.kd_weight * kd + (1 - args.kd_weight) * loss
                for key, adapter in adapters.items():
                    stride = int(key)
                    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=args.bf16):
                        guess = adapter(maps[HINT_STAGES[stride]]).float()
                    tmap = tmaps[stride].float()
                    if tmap.shape[-2:] != guess.shape[-2:]:  # the teacher saw the view at --teacher-size
                        tmap = F.adaptive_avg_pool2d(tmap, guess.shape[-2:])
                    hint = ((guess - tmap) ** 2).mean() / (tmap ** 2).mean()
                    loss = loss + hint_weights[stride] * hint
                    hint_tot[key] += float(hint.detach()) * len(idx)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            with torch.no_grad():
                d = min(args.ema, (1 + step) / (10 + step))
                for pe, pm in zip(ema.parameters(), model.parameters()):
                    pe.mul_(d).add_(pm.detach(), alpha=1 - d)
                for be, bm in zip(ema.buffers(), model.buffers()):
                    be.copy_(bm)
            tot += float(loss.detach()) * len(idx)
            correct += int((lg.argmax(1) == yb).sum())
            if args.time_steps and s + 1 >= args.time_steps:
                print("size %d: %.2f s/step" % (size, (time.time() - t0) / (s + 1)), flush=True)
                break
        if args.time_steps:
            continue
        vloss, vacc = evaluate(model, xva, yva, size)
        eloss, eacc = evaluate(ema, xva, yva, size)
        at224 = {}
        if size != 224 and args.select == "calibrated-loss":  # what the choice at the end will look at
            l224, _, c224, _ = evaluate(model, xva, yva, 224, calibrated=True)
            at224 = {"val224_loss": l224, "val224_calibrated_loss": c224}
        n = steps_per_epoch * args.batch
        rec = {"epoch": epoch + 1, "size": size, "lr_end": round(opt.param_groups[0]["lr"], 7), "loss": tot / n,
               "acc": correct / n, "val_loss": vloss, "val_acc": vacc, "ema_val_loss": eloss, "ema_val_acc": eacc,
               **at224, **{("hint" if k == "32" else "hint%s" % k): v / n for k, v in hint_tot.items()},
               "seconds": round(time.time() - t0, 1)}
        log.append(rec)
        print(json.dumps(rec), flush=True)
        save_atomic({"model": model.state_dict(), "ema": ema.state_dict(), "opt": opt.state_dict(),
                     "adapters": adapters.state_dict(), "gen": gen.get_state(), "log": json.dumps(log),
                     "epoch": epoch + 1}, ckpt_path)
        if args.stop_after and epoch + 1 >= args.stop_after:
            print("stopped after epoch %d (checkpoint in %s)" % (epoch + 1, ckpt_path), flush=True)
            return
    if args.time_steps:
        return

    # Both the trained weights and their moving average, batchnorm re-estimated at 224x224 on the
    # same un-augmented training images; the held-out tenth picks one.
    # With --keep-training-bn the trained weights as they stand (statistics gathered on augmented,
    # mixed batches) are a third candidate, kept in their own copy before the re-estimation.
    bn_idx = np.random.default_rng(args.seed).choice(len(ytr), size=min(args.bn_images, len(ytr)), replace=False)
    results, nets = {}, {"weights": model, "ema": ema}
    if args.keep_training_bn:
        kept = build_model(args.seed).to(memory_format=torch.channels_last)
        kept.load_state_dict(model.state_dict())
        nets["weights-training-bn"] = kept
        results["weights-training-bn"] = evaluate(kept, xva, yva, 224, calibrated=True)
        print("weights with their training batchnorm statistics at 224: val_loss %.4f val_acc %.4f "
              "calibrated_val_loss %.4f (T %.3f)" % results["weights-training-bn"], flush=True)
    for name, net in [("weights", model), ("ema", ema)]:
        recalibrate_bn(net, xtr[np.sort(bn_idx)], gen=torch.Generator().manual_seed(args.seed))
        results[name] = evaluate(net, xva, yva, 224, calibrated=True)
        print("%s after batchnorm re-estimation at 224: val_loss %.4f val_acc %.4f calibrated_val_loss %.4f "
              "(T %.3f)" % ((name,) + results[name]), flush=True)
    key = 2 if args.select == "calibrated-loss" else 0
    chosen = min(results, key=lambda k: (results[k][key], k))
    net = nets[chosen]
    final = os.path.join(args.work, "final.pt")
    save_atomic({"state": net.state_dict(), "chosen": chosen}, final)
    minutes = (time.time() - t_start) / 60
    with open(os.path.join(args.work, "train-log.json"), "w") as f:
        json.dump({"args": vars(args), "epochs": log,
                   "final": {k: {"val_loss": v[0], "val_acc": v[1], "calibrated_val_loss": v[2], "temperature": v[3]}
                             for k, v in results.items()},
                   "chosen": chosen, "minutes": round(minutes, 1), "torch": torch.__version__,
                   "cpu_threads": args.threads}, f, indent=1)
    print("chose %s; done in %.1f min; weights in %s" % (chosen, minutes, final), flush=True)


if __name__ == "__main__":
    main()
