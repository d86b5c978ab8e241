"""`fairattack export`: a torchvision or timm architecture with a local weights file -> a
TorchScript file that every command takes (resizing and normalisation inside).

    fairattack export resnet50 resnet50-0676ba61.pth resnet50.pt
    fairattack export efficientnet_b0 b0.safetensors b0.pt --library timm
"""

from pathlib import Path

from ._common import UsageError, description, positive_int


def add_parser(sub):
    from ..models import MODES

    e = sub.add_parser("export", help="a torchvision/timm architecture + a local weights file "
                       "-> a TorchScript model file", description=description(__doc__),
                       epilog="\n".join(__doc__.splitlines()[2:]))
    e.add_argument("arch", help="the architecture's name in the library (resnet50, vit_b_16, "
                   "...)")
    e.add_argument("weights", help="a state dict file (.pth / .pt / .safetensors; a "
                   "DataParallel 'module.' prefix is stripped)")
    e.add_argument("out", help="the TorchScript file to write (.pt)")
    e.add_argument("--library", default="torchvision", choices=("torchvision", "timm"),
                   type=str.lower, help="where the architecture comes from")
    e.add_argument("--image-size", type=positive_int, default=None,
                   help="the network's input size (default: 224 for torchvision, the "
                   "architecture's pretrained_cfg for timm)")
    e.add_argument("--mode", default=None, choices=MODES,
                   help="input normalisation (default: torch for torchvision, the "
                   "architecture's mean/std for timm)")
    e.set_defaults(func=cmd_export)
    return e


def cmd_export(args):
    from .. import models

    if not Path(args.weights).is_file():
        raise UsageError(f"weights file {args.weights!r} does not exist")
    if Path(args.out).suffix not in (".pt", ".ts"):
        raise UsageError(f"out {args.out!r}: name the TorchScript file .pt (or .ts)")
    if args.library == "torchvision":
        import torchvision

        if args.arch not in torchvision.models.list_models():
            from ._common import suggest

            raise UsageError(f"unknown torchvision architecture {args.arch!r}"
                             f"{suggest(args.arch, torchvision.models.list_models())}")
        try:
            path = models.export_torchvision(args.arch, args.weights, args.out,
                                             args.image_size or 224, args.mode or "torch")
        except RuntimeError as error:  # load_state_dict: keys or shapes that do not fit
            raise UsageError(f"weights {args.weights!r} do not fit torchvision's "
                             f"{args.arch}: {str(error).splitlines()[0]}") from None
    else:
        path = models.export_timm(args.arch, args.weights, args.out, args.image_size,
                                  args.mode)
    meta = models.read_metadata(path)
    size = "x".join(map(str, meta.get("input_size", [])))
    print(f"written: {path} ({args.library} {args.arch}, input {size}); use it as "
          f"--surrogates {path} or --victims {path}")
    return 0
