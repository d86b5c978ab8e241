"""`fairattack models`: the registered models."""


def add_parser(sub):
    m = sub.add_parser("models", help="the registered models",
                       description="The registered models and their input sizes.")
    m.set_defaults(func=cmd_models)
    return m


def cmd_models(args):
    from .. import models

    for name in models.available_models():
        print(f"{name:24s} input {models.input_size(name)}")
    print("(or any TorchScript file: `fairattack export ARCH WEIGHTS OUT.pt` wraps a torchvision "
          "or timm network with its weights file)")
    return 0
