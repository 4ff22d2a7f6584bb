"""Launch ``pengi-kit train`` workers through torch.distributed.run (torchrun)."""
from __future__ import annotations

import os
import signal


def torchrun(worker: list[str], *, nproc_per_node: int, nnodes: str, node_rank: int, rdzv_endpoint: str,
             rdzv_backend: str, rdzv_id: str, max_restarts: int) -> int:
    """Run ``python -m pengi_kit train <worker>`` on ``nproc_per_node`` processes of this machine
    (standalone rendezvous unless ``rdzv_endpoint`` is given); returns the exit status.

    Workers that stopped with an ``error:`` line (2) or on SIGINT/SIGTERM (130/143, with a
    checkpoint) already said why: their status is returned without torchrun's traceback."""
    from torch.distributed.elastic.multiprocessing.api import SignalException
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.run import parse_args, run

    launch = [f"--nproc-per-node={nproc_per_node}", f"--nnodes={nnodes}", f"--max-restarts={max_restarts}"]
    if rdzv_endpoint:
        launch += [f"--node-rank={node_rank}", f"--rdzv-endpoint={rdzv_endpoint}",
                   f"--rdzv-backend={rdzv_backend}", f"--rdzv-id={rdzv_id}"]
    else:
        launch += ["--standalone"]
    os.environ["PENGI_KIT_RUN_CHECKED"] = "1"  # the output directory held no other run: restarts continue it
    try:
        run(parse_args(launch + ["-m", "pengi_kit", "train", *worker]))
    except SignalException as exc:  # passed on to the workers, which stopped with a checkpoint
        return 128 + int(exc.sigval)
    except ChildFailedError as exc:
        codes = {failure.exitcode for failure in exc.failures.values()}
        if codes == {2} or (codes and codes <= {128 + signal.SIGINT, 128 + signal.SIGTERM}):
            return max(codes)
        raise
    return 0
