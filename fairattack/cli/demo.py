"""`fairattack demo`: EfficientNet-Lite0 -> Lite1/Lite2 and MobileNetV2 (another family), end to end (photos scikit-image ships, or
a folder)."""

import time
from pathlib import Path

from ..settings import PAPER_OPTIMIZERS
from ._common import UsageError, add_options, check_names, common_options, description
from .report import report

DEMO_SURROGATE = "efficientnet-lite0"
DEMO_VICTIMS = ("efficientnet-lite1", "efficientnet-lite2", "mobilenet-v2")


def _gallery(out_dir, surrogate, setting, optimizers, clean, names):
    """Fig. 3 for the first image: the clean photo and each optimizer's adversarial image."""
    from .. import figures
    from ..store import StudyFolder, png_names

    adversarials = {}
    png_name = png_names(names)[0]
    folder = StudyFolder(out_dir)
    for optimizer in optimizers:
        cell = folder.cell_dir(surrogate, setting, optimizer)
        if (cell / "adv" / png_name).is_file():
            adversarials[optimizer] = folder.read_adv(cell, [png_name])[0]
    if not adversarials:
        return None
    path = out_dir / "gallery.png"
    figures.plot_gallery(clean[0], adversarials, path=path,
                         title=f"{names[0]}: {surrogate}, {setting}")
    return path


def add_parser(sub):
    d = sub.add_parser("demo", help="EfficientNet-Lite0 -> Lite1/Lite2/MobileNetV2, end to end",
                       description=description(__doc__))
    add_options(d, "data", "n_images", "out", out="fairattack-demo",
                data_help="a folder of images (default: photos scikit-image ships)",
                n_images_help="images to select from --data (default 16; --n: the same)")
    common_options(d)
    d.set_defaults(func=cmd_demo)
    return d


def cmd_demo(args):
    from .. import data, models
    from ..study import run_study

    check_names(args.optimizers, args.settings)
    if args.data is not None and args.n_images is None:
        args.n_images = 16
    optimizers = args.optimizers or list(PAPER_OPTIMIZERS)
    started = time.time()
    size = models.input_size(DEMO_SURROGATE)
    if args.data is None:
        images, labels, names = data.demo_photos(size)
        source = (images, labels, names)
        print(f"data: {len(names)} photos shipped with scikit-image ({', '.join(names)})")
    else:
        if not Path(args.data).is_dir():
            raise UsageError(f"--data {args.data!r} is not a folder")
        source = args.data
        print(f"data: {args.data}, the first {args.n_images} images {DEMO_SURROGATE} classifies "
              "correctly (seeded order)")
    print(f"surrogate {DEMO_SURROGATE}, victims {', '.join(DEMO_VICTIMS)}; "
          f"{len(optimizers)} optimizers x {', '.join(args.settings or ['their default setting'])}")
    df = run_study([DEMO_SURROGATE], list(DEMO_VICTIMS), source, optimizers=optimizers,
                   settings=args.settings, out_dir=args.out, n_images=args.n_images,
                   batch_size=args.batch_size, device=args.device, progress=not args.quiet)
    print()
    report(df, args.out, started)
    if args.data is None:
        clean = source[0]
        names = source[2]
    else:
        from ..store import StudyFolder

        clean, names = StudyFolder(args.out).stored_selection(DEMO_SURROGATE)
    path = _gallery(Path(args.out), DEMO_SURROGATE, df.loc[0, "setting"],
                    list(df.loc[df["setting"] == df.loc[0, "setting"], "attack"]), clean, names)
    if path:
        print(f"figure/table: {path}")
    return 0
