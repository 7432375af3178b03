"""Data-parallel training with MindSpore's own launcher, `msrun` (its "dynamic cluster").

One command line, one code path: `mindtrans train ...` trains in this process, and

    msrun --worker_num=8 --local_worker_num=8 --master_port=8118 --log_dir=msrun_log --join=True \\
          python -m mindtrans train ...

starts a scheduler and 8 workers that train one model together. msrun tells each process
its role through environment variables (`MS_ROLE`, `MS_WORKER_NUM`, `MS_SCHED_HOST`,
`MS_SCHED_PORT`, see `MSRUN_VARIABLES`); `init_distributed` reads them:

- no msrun: nothing is touched, the rank is 0 of 1;
- msrun's scheduler (`MS_ROLE=MS_SCHED`, it runs the same command line): MindSpore's
  `init()` runs the scheduler there until the job ends, so the call never returns;
- a worker: data-parallel mode (`set_auto_parallel_context`), then `init()` joins the
  cluster over HCCL (Ascend), NCCL (GPU) or MCCL (CPU) and gives this process its rank.

What the trainer does with the rank (see `mindtrans.training`): worker r reads shard r of
every epoch's batch plan through `mindspore.dataset`, the gradients are summed across the
workers with `nn.DistributedGradReducer` and divided by the number of target tokens in
the whole global batch, so that W workers take exactly the optimizer steps one process
would take with `accum_steps=W`; only rank 0 writes the run directory.
"""
import os

MSRUN_VARIABLES = ("MS_ROLE", "MS_WORKER_NUM", "MS_SCHED_HOST", "MS_SCHED_PORT")
_state = None  # (rank, world_size) once known


class DistributedError(RuntimeError):
    """Joining the msrun job failed, or the job lost a worker."""


def launched_by_msrun(environ=None) -> bool:
    """True in a process started by msrun (or by hand with the dynamic-cluster variables)."""
    environ = os.environ if environ is None else environ
    return environ.get("MS_ROLE") in ("MS_WORKER", "MS_SCHED") and all(environ.get(v) for v in MSRUN_VARIABLES)


def is_scheduler(environ=None) -> bool:
    environ = os.environ if environ is None else environ
    return launched_by_msrun(environ) and environ.get("MS_ROLE") == "MS_SCHED"


def _scheduler_address() -> str:
    return f"{os.environ.get('MS_SCHED_HOST')}:{os.environ.get('MS_SCHED_PORT')}"


def run_scheduler(out=None) -> None:
    """msrun's scheduler process: serve the cluster until the job ends, then exit.

    MindSpore's `init()` does not return in the scheduler when the job ends normally. When
    workers are lost it raises (after `MS_NODE_TIMEOUT` seconds, 30 by default), naming
    them; that error is passed on with where to look and how to continue. `out`: the run
    directory, for the message.
    """
    from mindspore.communication import init

    try:
        init()
    except RuntimeError as err:
        from mindtrans.rundir import RunDir

        latest = RunDir(out).latest if out else None
        resume = (f" {latest} holds the last completed epoch: continue with --resume once the cause is fixed."
                  if latest and latest.is_file() else "")
        raise DistributedError(
            # "Error" with a capital E: msrun shows the scheduler's log lines that match ERROR|Error|Traceback
            f"the msrun scheduler at {_scheduler_address()} stopped the job. Error reported by MindSpore: "
            f"{_message(err)} Each worker's output "
            f"is in msrun's --log_dir (worker_<rank>.log, with the rank and process id at the top).{resume}") from err
    raise SystemExit(0)


def init_distributed() -> tuple:
    """(rank, world_size): (0, 1) without msrun; in an msrun worker, join the job first.

    Call it after choosing the device (`mindtrans.device.select_device`) and before
    building the model. Later calls return the first answer. In msrun's scheduler process
    it runs the scheduler and exits instead of returning (see `run_scheduler`).
    """
    global _state
    if _state is not None:
        return _state
    if not launched_by_msrun():
        _state = (0, 1)
        return _state
    if is_scheduler():
        run_scheduler()
    import mindspore as ms
    from mindspore.communication import get_group_size, get_rank, init

    # Gradients are summed (gradients_mean=False): the trainer divides them by the global
    # number of target tokens itself, which is what makes W workers equal one big batch.
    ms.set_auto_parallel_context(parallel_mode=ms.ParallelMode.DATA_PARALLEL, gradients_mean=False)
    try:
        init()
    except RuntimeError as err:
        raise DistributedError(
            f"could not join the msrun job through the scheduler at {_scheduler_address()} "
            f"(MS_WORKER_NUM={os.environ.get('MS_WORKER_NUM')}): {_message(err)} Check that every machine "
            f"can reach that address and port, that --worker_num is the sum of the --local_worker_num of all "
            f"machines, and that all of them started within --cluster_time_out seconds") from err
    rank, world = int(get_rank()), int(get_group_size())
    expected = int(os.environ["MS_WORKER_NUM"])
    if world != expected:
        raise DistributedError(f"the msrun job has {world} workers, but MS_WORKER_NUM is {expected}")
    _state = (rank, world)
    return _state


def rank() -> int:
    """This process's rank (0 before `init_distributed` and without msrun)."""
    return _state[0] if _state else 0


def world_size() -> int:
    """How many workers train together (1 before `init_distributed` and without msrun)."""
    return _state[1] if _state else 1


def is_main() -> bool:
    """Rank 0: the one process that writes logs, checkpoints and the bundle."""
    return rank() == 0


def describe() -> str:
    """'rank 1 of 8' in a distributed job, '' otherwise (for messages)."""
    return f"rank {rank()} of {world_size()}" if world_size() > 1 else ""


def barrier() -> None:
    """Wait until every worker gets here (an all-reduce of one number); nothing to do alone.

    The trainer ends with one, so that no worker is done before rank 0 has written everything:
    should that worker's process then exit with an error, msrun would kill the whole job at
    once, rank 0 included.
    """
    if world_size() > 1:
        import mindspore as ms
        from mindspore import ops

        ops.AllReduce()(ms.Tensor([1.0], ms.float32)).asnumpy()


# Words in MindSpore's errors when the cluster or a collective (HCCL, NCCL, MCCL) has failed.
_CLUSTER_FAILURE_HINTS = ("cluster", "abnormal", "timed out", "timeout", "hccl", "nccl", "disconnect",
                          "connection", "heartbeat", "allreduce")


def is_cluster_failure(err: BaseException) -> bool:
    text = str(err).lower()
    return any(hint in text for hint in _CLUSTER_FAILURE_HINTS)


def lost_worker_error(err: BaseException, out) -> DistributedError:
    """What a worker says when a collective operation fails mid-training (the CLI adds the rank)."""
    return DistributedError(
        f"a collective operation failed, so another worker of this job has died or become unreachable "
        f"(the first error is in the other workers' logs, in msrun's --log_dir). {out}/latest.ckpt, written by "
        f"rank 0, holds the last completed epoch if there was one; start the job again with --resume. "
        f"MindSpore said: {_message(err)}")


def _message(err: BaseException, limit: int = 1000) -> str:
    """MindSpore's error text on one line, without the C++ call stack that follows it."""
    lines = []
    for line in str(err).strip().splitlines():
        if line.startswith("----") or "C++ Call Stack" in line:
            break
        if line.strip():
            lines.append(line.strip())
    text = " ".join(lines) or type(err).__name__
    return text if len(text) <= limit else text[:limit - 3] + "..."
