"""This process's place among a study's processes (torchrun) and its GPU."""

import os


class Ranks:
    """This process's place among the study's processes: torch.distributed when launched by
    torchrun (WORLD_SIZE > 1) or already initialised, else one process."""

    def __init__(self, device):
        self.rank, self.world, self.dist, self.owned = 0, 1, None, False
        world = int(os.environ.get("WORLD_SIZE", "1"))
        import torch.distributed as dist

        if dist.is_available() and dist.is_initialized():
            self.dist = dist
        elif world > 1:
            import datetime

            cuda = str(device).startswith("cuda")
            dist.init_process_group("nccl" if cuda else "gloo",
                                    timeout=datetime.timedelta(hours=24))
            self.dist, self.owned = dist, True
        if self.dist is not None:
            self.rank, self.world = self.dist.get_rank(), self.dist.get_world_size()

    def barrier(self):
        if self.dist is not None and self.world > 1:
            if self.dist.get_backend() == "nccl":
                import torch

                self.dist.barrier(device_ids=[torch.cuda.current_device()])
            else:
                self.dist.barrier()

    def close(self):
        if self.owned:
            self.dist.destroy_process_group()


def pin_local_gpu(device):
    """Under torchrun with device="cuda", each rank sees only GPU LOCAL_RANK (as cuda:0); done
    before CUDA is initialised in this process."""
    if not str(device).startswith("cuda") or int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return
    local = os.environ.get("LOCAL_RANK")
    if local is None or os.environ.get("FAIRATTACK_PINNED_GPU") == local:
        return
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    devices = visible.split(",") if visible else None
    import torch

    if torch.cuda.is_initialized():
        raise RuntimeError("run_study under torchrun: CUDA was initialised before run_study, so "
                           "its rank cannot be pinned to GPU LOCAL_RANK; set "
                           "CUDA_VISIBLE_DEVICES per rank or call run_study first")
    os.environ["CUDA_VISIBLE_DEVICES"] = devices[int(local)] if devices else local
    os.environ["FAIRATTACK_PINNED_GPU"] = local
