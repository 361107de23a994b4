"""The demo's job runner: results come back by name from worker processes, each job's output goes to
its own log, and a failing job raises an error that names it and its log."""

from __future__ import annotations

import operator

import pytest

from clips_cli.demo_pipeline.parallel import Job, JobError, run_jobs


def test_results_by_name_and_output_in_the_log(tmp_path):
    jobs = [Job(f"add {i}", operator.add, (i, 10), tmp_path / f"add{i}" / "log.txt", steps=3) for i in range(3)]
    jobs.append(Job("print", print, ("hello from a worker",), tmp_path / "print.log"))
    done = run_jobs(jobs, workers=2, desc="test", progress=False)
    assert {name: result for name, (result, _) in done.items()} == {"add 0": 10, "add 1": 11, "add 2": 12,
                                                                    "print": None}
    assert all(seconds >= 0 for _, seconds in done.values())
    assert (tmp_path / "print.log").read_text() == "hello from a worker\n"


def test_a_failing_job_is_named_with_its_log(tmp_path):
    jobs = [Job("fine", operator.add, (1, 2), tmp_path / "fine.log"),
            Job("broken", operator.truediv, (1, 0), tmp_path / "broken.log")]
    with pytest.raises(JobError, match=r"broken failed \(ZeroDivisionError.*its log: .*broken\.log"):
        run_jobs(jobs, workers=1, desc="test", progress=False)
