"""Run `diffalign` commands one after another in each process of a distributed launch (the tests' launcher).

    accelerate launch --multi_gpu --num_processes N tests/processes/driver.py JOBS.json FOLDER

JOBS.json lists {"name", "argv", "fault"}; each process runs every job's `diffalign.cli.main.main(argv)` in
turn (an exception or exit ends only that job), its stdout and stderr going to FOLDER/NAME.RANK.out/.err,
and writes FOLDER/results.RANK.json: per job its exit status and the chunk records it wrote. A fault
{"process": R, "after": K, "how": "raise"|"exit"} makes process R fail instead of writing its (K+1)-th chunk
record (the chunk's outputs are written, its record is not): "raise" raises in the job, "exit" kills the
process at once, as a crash or an out-of-memory kill would (the launcher then stops the whole launch).
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
import time
from pathlib import Path


def main() -> None:
    jobs = json.loads(Path(sys.argv[1]).read_text())
    folder = Path(sys.argv[2])
    rank = int(os.environ.get("RANK", "0"))
    from diffalign import processes
    from diffalign.cli.main import main as diffalign

    original = processes.ChunkRecords.write
    current: dict = {}

    def write(self, chunk: int, record: dict) -> None:
        fault = current.get("fault")
        if fault and fault["process"] == rank and current["records"] >= fault["after"]:
            if fault["how"] == "exit":
                os._exit(9)
            raise RuntimeError("injected fault: this process fails before recording its chunk")
        original(self, chunk, record)
        current["records"] += 1

    processes.ChunkRecords.write = write
    results = {}
    for job in jobs:
        current.update(fault=job.get("fault"), records=0)
        start = time.perf_counter()
        with open(folder / f"{job['name']}.{rank}.out", "w") as out, open(folder / f"{job['name']}.{rank}.err", "w") as err, \
                contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            try:
                rc = diffalign(job["argv"])
            except SystemExit as stop:
                rc = stop.code if isinstance(stop.code, int) else 1
            except BaseException as error:  # noqa: BLE001 - recorded, the next job runs
                print(f"{type(error).__name__}: {error}", file=sys.stderr)
                rc = 1
        results[job["name"]] = {"rc": rc, "records": current["records"], "seconds": time.perf_counter() - start}
        (folder / f"results.{rank}.json").write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
