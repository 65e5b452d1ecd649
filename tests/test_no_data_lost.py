"""Nothing a run has made is lost: divergence stops training and keeps the last finite
checkpoint; a run is never replaced unless asked, and one writer holds its folder; output
locations are checked before any work and failed writes say what happened; every file is
written atomically, as strict JSON, and a killed writer's leftovers are cleared; edge
cases of the options are refused by name."""

import errno
import json
import os
import subprocess
import sys

import pytest
import torch

import contnet
from contnet import cli
from contnet import training as train
from contnet.report import atomic_write, temporary_path, write_json
from contnet.training import rundir

QUICK = ["--widths", "4", "4", "--batch-size", "128", "--no-progress"]


def _train(out, *extra):
    return cli.main(["train", "--epochs", "2", *QUICK, "--out", str(out), *extra])


def _compress(run, *extra):
    return cli.main(["compress", "--checkpoint", str(run / "checkpoint.pt"), *extra])


# -- divergence ---------------------------------------------------------------------------


def test_divergence_stops_training_and_keeps_the_last_finite_checkpoint(tmp_path, monkeypatch):
    out = tmp_path / "d"
    args = ["train", "--widths", "8", "8", "--epochs", "3", "--lr", "1000"]
    args += ["--schedule", "constant", "--no-progress", "--out", str(out)]
    with pytest.raises(SystemExit, match="diverged in epoch 1: the training loss is nan; "
                       "stopped, no epoch had finished: nothing was saved"):  # fmt: skip
        cli.main(args)
    assert not (out / "checkpoint.pt").exists()
    # epoch 1 finite, then the loss turns NaN (injected at the second epoch's first batch)
    from contnet.training import loop

    real, calls = loop.F.cross_entropy, []

    def nan_from_epoch_2(out_, y, *a, **kw):
        loss = real(out_, y, *a, **kw)
        if kw.get("reduction", "mean") == "mean":  # training batches (not the evaluation)
            calls.append(1)
            if len(calls) > 11:  # 1,295 training images, batches of 128
                return loss * float("nan")
        return loss

    monkeypatch.setattr(loop.F, "cross_entropy", nan_from_epoch_2)
    with pytest.raises(SystemExit) as e:
        cli.main(["train", "--epochs", "3", *QUICK, "--out", str(out)])
    assert "diverged in epoch 2: the training loss is nan; stopped, the last finite " in str(
        e.value
    ) and "checkpoint, epoch 1, is kept at" in str(e.value)
    payload = train.load_checkpoint(out / "checkpoint.pt")
    assert payload["meta"]["epoch"] == 0
    train.check_finite(payload)


def test_eval_and_compress_refuse_non_finite_weights_naming_them(tmp_path):
    torch.manual_seed(0)
    net = contnet.ContinuousNet(1, 10, widths=(4,), n_basis=1)
    with torch.no_grad():
        net.stages[0].unit.conv1.weight[0, 0, 0, 0, 0] = float("nan")
    path = train.save_checkpoint(tmp_path / "nan.pt", net)
    for command in ("eval", "compress"):
        with pytest.raises(
            SystemExit, match=r"non-finite weights in 1 of .*stages\.0\.unit\.conv1\.weight"
        ):
            cli.main([command, "--checkpoint", str(path)])
    # the checkpoint's summary is strict JSON even with NaN in the history
    train.save_checkpoint(tmp_path / "h.pt", net, history=[{"train_loss": float("nan")}])
    assert json.loads((tmp_path / "h.json").read_text())["history"] == [{"train_loss": None}]


# -- overwrites and concurrent runs ------------------------------------------------------


def test_an_existing_run_is_replaced_only_when_asked(tmp_path):
    out = tmp_path / "run"
    assert _train(out) == 0
    before = (out / "checkpoint.pt").read_bytes()
    with pytest.raises(
        SystemExit, match=r"holds a run \(epoch 2 of 2; checkpoint\.pt.*--resume.*--overwrite"
    ):
        _train(out, "--seed", "1")
    assert (out / "checkpoint.pt").read_bytes() == before
    assert _train(out, "--resume") == 0  # finished: resumes to the end at once
    assert _train(out, "--seed", "1", "--overwrite") == 0
    assert (out / "checkpoint.pt").read_bytes() != before


def test_a_second_writer_is_refused_naming_the_first(tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    holder = subprocess.Popen(
        [sys.executable, "-c", (
            "import sys, time; from contnet.training import rundir\n"
            f"lock = rundir.RunLock({str(out)!r}).acquire()\n"
            "print('held', flush=True); time.sleep(60)"
        )],
        stdout=subprocess.PIPE,
        text=True,
    )  # fmt: skip
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(
            SystemExit, match=rf"is being written by another run \(pid {holder.pid}"
        ):
            _train(out)
    finally:
        holder.kill()
        holder.wait()
    assert _train(out) == 0  # the lock went with its holder


def test_compress_save_refuses_its_input_and_benchmarks_write_a_fresh_folder(tmp_path, monkeypatch):
    out = tmp_path / "run"
    assert _train(out) == 0
    ck = out / "checkpoint.pt"
    before = ck.read_bytes()
    for save in (ck, out / ".." / "run" / "checkpoint.pt"):
        with pytest.raises(SystemExit, match="is the checkpoint being compressed"):
            cli.main(["compress", "--checkpoint", str(ck), "--save", str(save)])
    assert ck.read_bytes() == before
    from contnet.bench import common

    monkeypatch.delenv("CONTNET_BENCH_RESULTS", raising=False)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(common, "_RUN_DIR", None)
    where = common.results_dir()
    assert where.parent == tmp_path / "runs" / "bench" and not where.exists()
    assert common.results_dir() == where  # one folder per run


# -- output locations checked first; failed writes in one line ----------------------------


def _forbid(monkeypatch, code):
    """The write probe of an output folder fails with ``code`` (a read-only file system,
    a full disk), as it would there."""
    real = os.open

    def failing(path, flags, *args, **kw):
        if "write-probe" in str(path):
            raise OSError(code, os.strerror(code), str(path))
        return real(path, flags, *args, **kw)

    monkeypatch.setattr(rundir.os, "open", failing)


def test_unusable_output_locations_are_refused_before_any_work(tmp_path, monkeypatch, capsys):
    afile = tmp_path / "file"
    afile.write_text("x")
    with pytest.raises(SystemExit, match=rf"--out {afile} is a file, not a folder"):
        _train(afile)
    with pytest.raises(SystemExit, match="cannot be written: a part of the path is a file"):
        _train(afile / "sub")
    _forbid(monkeypatch, errno.EROFS)
    with pytest.raises(SystemExit, match="cannot be written: the file system is read-only"):
        _train(tmp_path / "ro")
    assert "epoch" not in capsys.readouterr().out  # nothing trained


def test_eval_beside_a_read_only_checkpoint_fails_before_evaluating(tmp_path, monkeypatch, capsys):
    out = tmp_path / "run"
    assert _train(out) == 0
    capsys.readouterr()
    _forbid(monkeypatch, errno.EROFS)
    with pytest.raises(
        SystemExit, match=r"contnet eval: --out .* cannot be written: the file system is read-only"
    ):
        cli.main(["eval", "--checkpoint", str(out / "checkpoint.pt")])
    assert "test accuracy" not in capsys.readouterr().out


def test_a_full_disk_says_so_and_keeps_the_previous_checkpoint(tmp_path, monkeypatch):
    from contnet.training import checkpoint_file

    real, calls = torch.save, []

    def full_at_the_second(*args, **kwargs):  # epoch 1 is written, epoch 2 meets a full disk
        calls.append(1)
        if len(calls) == 2:
            raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 4096")
        return real(*args, **kwargs)

    monkeypatch.setattr(checkpoint_file.torch, "save", full_at_the_second)
    monkeypatch.setattr(
        checkpoint_file.shutil, "disk_usage", lambda p: type("U", (), {"free": 0})()
    )
    out = tmp_path / "run"
    with pytest.raises(
        SystemExit, match=r"contnet train: cannot write .*checkpoint\.pt: the disk is full"
    ):
        _train(out)
    monkeypatch.setattr(checkpoint_file.torch, "save", real)
    assert train.load_checkpoint(out / "checkpoint.pt")["meta"]["epoch"] == 0
    assert not [p for p in out.iterdir() if ".contnet-tmp-" in p.name]


# -- atomic, strict files; a killed writer's leftovers ------------------------------------


def test_files_are_written_whole_or_not_at_all_as_strict_json(tmp_path):
    path = write_json(tmp_path / "a.json", {"loss": float("nan"), "acc": [1.0, float("inf")]})
    assert json.loads(path.read_text(), parse_constant=pytest.fail) == {
        "loss": None,
        "acc": [1.0, None],
    }

    def broken(p):
        p.write_text('{"half": ')
        raise OSError(errno.ENOSPC, "No space left on device")

    with pytest.raises(OSError):
        atomic_write(path, broken)
    assert json.loads(path.read_text())["acc"] == [1.0, None]  # the previous file
    assert [p.name for p in tmp_path.iterdir()] == ["a.json"]


def test_a_killed_writers_leftovers_are_cleared_and_the_summary_derived_again(tmp_path, capsys):
    out = tmp_path / "run"
    assert _train(out) == 0
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True).stdout.strip()  # fmt: skip
    partial = temporary_path(out / "checkpoint.pt", int(dead))
    partial.write_bytes(b"half a checkpoint")
    summary = json.loads((out / "checkpoint.json").read_text())
    summary["epoch"] = 0  # as if killed between the checkpoint and its summary
    (out / "checkpoint.json").write_text(json.dumps(summary))
    capsys.readouterr()
    assert _train(out, "--resume") == 0
    printed = capsys.readouterr().out
    assert f"removed {partial.name}" in printed and not partial.exists()
    assert "rewrote checkpoint.json from checkpoint.pt" in printed
    meta = train.load_checkpoint(out / "checkpoint.pt")["meta"]
    assert json.loads((out / "checkpoint.json").read_text())["epoch"] == meta["epoch"] == 1


# -- edges -------------------------------------------------------------------------------


def test_option_edges_are_refused_by_name(tmp_path, capsys):
    out = str(tmp_path / "e")
    for argv, message in (
        (["--val-fraction", "0.999"], "leaves class 0 no training image"),
        (
            ["--epochs", "3", "--refine-at", "1", "1"],
            r"refine_at must be increasing epochs, each once, got \[1, 1\]",
        ),
        (["--epochs", "3", "--refine-at", "2", "1"], r"refine_at must be increasing"),
    ):
        with pytest.raises(SystemExit, match=message):
            cli.main(["train", *QUICK, "--out", out, *argv])
    assert _train(tmp_path / "few", "--val-fraction", "0.95") == 0
    assert "class 0 has only 7 training images (fewer than 10)" in capsys.readouterr().out
    with pytest.raises(SystemExit, match="n_basis candidate 3 is more nodes than any block has"):
        _compress(tmp_path / "few", "--candidate-n-basis", "3")


def test_what_is_not_a_checkpoint_or_a_data_folder_is_named(tmp_path):
    out = tmp_path / "run"
    assert _train(out) == 0
    for path, message in (
        (tmp_path, "is a folder, not a checkpoint file"),
        (out / "checkpoint.json", r"is the JSON summary of a checkpoint; pass .*checkpoint\.pt"),
        (out / "train.json", "is not a checkpoint"),
        (tmp_path / "none.pt", "does not exist"),
    ):
        with pytest.raises(SystemExit, match=message):
            cli.main(["eval", "--checkpoint", str(path)])
    with pytest.raises(SystemExit, match="is a file, not the folder of"):
        cli.main(
            [
                "train",
                "--data",
                "cifar10",
                "--data-dir",
                str(out / "train.json"),
                "--out",
                str(tmp_path / "c"),
            ]
        )


def test_ctrl_c_is_one_line(tmp_path, monkeypatch, capsys):
    from contnet.cli import commands

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(commands, "train", interrupted)
    assert _train(tmp_path / "run") == 130
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "interrupted" in err[0] and "--resume" in err[0]


def test_the_compress_report_does_not_call_a_tie_faster(tmp_path, monkeypatch, capsys):
    from contnet.cli import commands

    o = {"latency_ms": 1.00, "test": 0.9, "val": 0.9, "blocks": [1]}
    c = {"latency_ms": 1.01, "test": 0.9, "val": 0.9, "blocks": [2], "drop_points": 0.0}
    c.update(n_basis=1, scheme="euler", n_steps=1, parameters=1)
    o.update(n_basis=2, scheme="rk4", n_steps=2, parameters=2, drop_points=0.0)
    result = {"original": o, "choice": c, "candidates": [o, c], "metric": "accuracy"}
    result.update(max_drop_points=1.0, latency_batch=8)
    monkeypatch.setattr(commands, "compress", lambda *a, **k: result)
    ds = train.load("digits")
    commands.run_compress(None, ds, tmp_path, 1.0, train_cfg={"val_fraction": 0.1})
    printed = capsys.readouterr().out
    assert "as fast within the timing noise (5%): chosen for its fewer parameters" in printed
    assert "faster)" not in printed


@pytest.mark.parametrize(
    "argv, message",
    [
        (["block", "--K", "0"], "argument --K: must be >= 1"),
        (["block", "--bases", "nosuch"], "argument --bases: invalid choice: 'nosuch'"),
        (["block", "--rounds", "0"], "argument --rounds: must be >= 1"),
        (["ops", "--rounds", "0"], "argument --rounds: must be >= 1"),
        (["nosuch"], "unknown suite 'nosuch'; expected one of ops, block, inference, backprop"),
        (["block", "--schemes", "nosuch"], "argument --schemes: invalid choice: 'nosuch'"),
        (["block", "--device", "nosuch"], "argument --device: not a device"),
        (["ops", "--log2-sizes", "40"], "argument --log2-sizes: must be at most 30"),
        (["ops", "--processes", "-1"], "argument --processes: must be >= 0"),
    ],
)
def test_benchmark_options_are_refused_by_name(argv, message, capsys):
    from contnet.bench.__main__ import main

    with pytest.raises(SystemExit) as e:
        main(argv)
    assert message in str(e.value) + capsys.readouterr().err


def test_compress_save_checks_its_target_before_any_work(tmp_path, capsys):
    base, other = tmp_path / "base", tmp_path / "other"
    assert _train(base) == 0 and _train(other) == 0
    ck = str(base / "checkpoint.pt")
    theirs = other / "checkpoint.pt"
    before = theirs.read_bytes()
    (tmp_path / "adir").mkdir()
    (tmp_path / "small.json").mkdir()
    capsys.readouterr()
    for save, message in (
        (theirs, r"exists: pass --overwrite to replace it"),  # another run's checkpoint
        (tmp_path / "adir", "adir is a folder"),
        (tmp_path / "small.pt", "small.json is a folder"),  # where its summary goes
    ):
        with pytest.raises(SystemExit, match=message):
            cli.main(["compress", "--checkpoint", ck, "--save", str(save)])
    assert "candidates" not in capsys.readouterr().out  # refused before any work
    assert theirs.read_bytes() == before
    with rundir.RunLock(other):  # a run is writing there: refused even with --overwrite
        with pytest.raises(SystemExit, match="its folder is being written by a run"):
            cli.main(["compress", "--checkpoint", ck, "--save", str(theirs), "--overwrite"])
    assert theirs.read_bytes() == before
    (base / "eval.json").mkdir()
    with pytest.raises(SystemExit, match="eval.json, which it writes, is a folder there"):
        cli.main(["eval", "--checkpoint", ck])


def test_a_failed_write_names_the_file_asked_for(tmp_path, capsys):
    def full(p):
        raise OSError(errno.ENOSPC, "No space left on device", str(p))

    with pytest.raises(OSError) as e:
        atomic_write(tmp_path / "theta.png", full)
    assert e.value.filename == str(tmp_path / "theta.png") and e.value.errno == errno.ENOSPC
    from contnet.bench.__main__ import main

    with pytest.raises(SystemExit):  # a tag is a part of a file name, not a path
        main(["block", "--tag", "../../escaped"])
    assert "argument --tag: must be letters, digits" in capsys.readouterr().err


def test_an_interrupt_while_a_checkpoint_is_written_lands_after_its_summary(tmp_path, monkeypatch):
    import signal

    from contnet.training import checkpoint_file

    real = checkpoint_file.atomic_write
    net = contnet.ContinuousNet(1, 10, widths=(4,), n_basis=1)
    train.save_checkpoint(tmp_path / "c.pt", net, epoch=2)

    def interrupted_after_the_checkpoint(path, write):
        out = real(path, write)
        if str(path).endswith(".pt"):  # Ctrl-C between the checkpoint and its summary
            os.kill(os.getpid(), signal.SIGINT)
        return out

    monkeypatch.setattr(checkpoint_file, "atomic_write", interrupted_after_the_checkpoint)
    with pytest.raises(KeyboardInterrupt):
        train.save_checkpoint(tmp_path / "c.pt", net, epoch=3)
    assert json.loads((tmp_path / "c.json").read_text())["epoch"] == 3
    assert train.load_checkpoint(tmp_path / "c.pt")["meta"]["epoch"] == 3


def test_compress_does_not_choose_on_nothing(tmp_path):
    assert _train(tmp_path / "run") == 0
    with pytest.raises(SystemExit, match="--val-fraction 0 leaves nothing to choose on"):
        _compress(tmp_path / "run", "--val-fraction", "0")


def test_options_a_model_cannot_take_are_refused_before_a_run_is_replaced(tmp_path):
    out = tmp_path / "run"
    assert _train(out) == 0
    before = (out / "checkpoint.pt").read_bytes()
    for bad, message in (
        (["--model", "transformer", "--patch-size", "3"], "must be divisible by patch_size 3"),
        (["--scheme", "lm", "--backprop", "adjoint"], "backprop 'adjoint' needs a Runge-Kutta"),
    ):
        with pytest.raises(SystemExit, match=message):
            _train(out, "--overwrite", *bad)
        assert (out / "checkpoint.pt").read_bytes() == before


def _dead_pid() -> str:
    return subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True).stdout.strip()  # fmt: skip


def test_eval_and_compress_clear_a_killed_writers_leftovers(tmp_path, capsys):
    out = tmp_path / "run"
    assert _train(out) == 0
    dead = _dead_pid()
    left = [temporary_path(out / n, int(dead)) for n in ("eval.json", "compress.json")]
    for p in left:
        p.write_text('{"half": ')
    capsys.readouterr()
    ck = str(out / "checkpoint.pt")
    assert cli.main(["eval", "--checkpoint", ck, "--schemes", "euler", "--steps", "1", "2",
                     "--reference", "euler", "4"]) == 0  # fmt: skip
    assert cli.main(["compress", "--checkpoint", ck]) == 0
    printed = capsys.readouterr().out
    for p in left:
        assert f"removed {p.name}" in printed and not p.exists()
    for name in ("eval.json", "compress.json"):
        json.loads((out / name).read_text())  # whole


def test_compress_save_never_replaces_the_summary_of_its_input(tmp_path, capsys):
    out = tmp_path / "run"
    assert _train(out) == 0
    summary = (out / "checkpoint.json").read_bytes()
    capsys.readouterr()
    for flags in ([], ["--overwrite"]):  # checkpoint.pth's summary is checkpoint.json
        with pytest.raises(SystemExit, match="is that of the checkpoint being compressed"):
            cli.main(["compress", "--checkpoint", str(out / "checkpoint.pt"),
                      "--save", str(out / "checkpoint.pth"), *flags])  # fmt: skip
    (tmp_path / "small.json").write_text("{}")  # a summary without its checkpoint
    with pytest.raises(SystemExit, match=r"small.json exists: pass --overwrite"):
        cli.main(["compress", "--checkpoint", str(out / "checkpoint.pt"),
                  "--save", str(tmp_path / "small.pt")])  # fmt: skip
    assert "candidates" not in capsys.readouterr().out  # refused before any work
    assert (out / "checkpoint.json").read_bytes() == summary
    assert not (out / "checkpoint.pth").exists()


def test_the_demo_replaces_only_a_demos_folder(tmp_path, capsys):
    from contnet.cli import demo

    out = tmp_path / "run"
    assert _train(out) == 0
    before = (out / "checkpoint.pt").read_bytes()
    with pytest.raises(SystemExit, match=r"holds a run that is not a demo's \(checkpoint.pt"):
        cli.main(["demo", "--out", str(out)])
    assert (out / "checkpoint.pt").read_bytes() == before
    assert not (out / demo.DEMO_MARK).exists()
    # a user's run where the demo keeps one of its own runs is refused as well
    theirs = tmp_path / "theirs"
    assert _train(theirs / "refined") == 0
    with pytest.raises(SystemExit, match=r"not a demo's \(refined/checkpoint.pt"):
        cli.main(["demo", "--out", str(theirs)])
    # a demo killed before its summary leaves its mark: a second demo may replace its runs
    killed = tmp_path / "killed"
    killed.mkdir()
    demo._claim_demo_folder(killed)
    assert (killed / demo.DEMO_MARK).exists()
    assert _train(killed / "refined") == 0
    demo._claim_demo_folder(killed)
    # and it removes an earlier demo's summary and reports first: a demo stopped midway
    # never leaves a summary of runs it has replaced
    for name in ("demo.json", "eval.json", "theta.png"):
        (killed / name).write_text("{}")
    demo._claim_demo_folder(killed)
    assert not any((killed / n).exists() for n in ("demo.json", "eval.json", "theta.png"))
    assert (killed / "refined" / "checkpoint.pt").exists()  # its runs go when replaced
    # one demo at a time in a folder
    with rundir.RunLock(killed):
        with pytest.raises(SystemExit, match="is being written by another run"):
            cli.main(["demo", "--out", str(killed)])
    afile = tmp_path / "afile"
    afile.write_text("x")
    with pytest.raises(SystemExit, match=rf"--out {afile} is a file, not a folder"):
        cli.main(["demo", "--out", str(afile)])


def test_resume_and_overwrite_are_not_given_together(tmp_path, capsys):
    for argv in (
        ["train", "--out", str(tmp_path)],
        ["reproduce", "--preset", "continuousnet-cifar10", "--out", str(tmp_path)],
    ):
        with pytest.raises(SystemExit):
            cli.main([*argv, "--resume", "--overwrite"])
        assert "argument --overwrite: not allowed with argument --resume" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []


def test_a_benchmark_checks_its_results_folder_before_timing(tmp_path, monkeypatch, capsys):
    from contnet.bench import common
    from contnet.bench.__main__ import main

    afile = tmp_path / "afile"
    afile.write_text("x")
    monkeypatch.setenv("CONTNET_BENCH_RESULTS", str(afile))
    monkeypatch.setattr(common, "_RUN_DIR", None)
    timed = []
    monkeypatch.setattr(common.tb, "Timer", lambda *a, **k: timed.append(1))
    for argv in (["ops", "--rounds", "1"], ["block", "--rounds", "1"], ["backprop", "--quick"]):
        with pytest.raises(SystemExit, match=rf"contnet bench: CONTNET_BENCH_RESULTS {afile} is a "
                                             "file, not a folder"):  # fmt: skip
            main(argv)
    assert timed == [] and afile.read_text() == "x"


def test_resume_without_a_checkpoint_does_not_start_over_a_folders_files(tmp_path, capsys):
    out = tmp_path / "run"
    assert _train(out) == 0
    (out / "checkpoint.pt").unlink()
    (out / "checkpoint.json").unlink()
    files = lambda: {p.name: p.read_bytes() for p in out.iterdir() if p.name != ".lock"}  # noqa: E731
    before = files()
    with pytest.raises(SystemExit, match="but no checkpoint.pt to resume from: pass --overwrite"):
        _train(out, "--resume")
    with pytest.raises(SystemExit, match="but no checkpoint.pt to resume from"):
        _train(out)  # nor advised to --resume
    assert files() == before
    assert _train(tmp_path / "fresh", "--resume") == 0  # an empty folder: from the start


def test_compress_save_never_takes_the_name_of_a_report(tmp_path, capsys):
    out = tmp_path / "run"
    assert _train(out) == 0
    for save in ("compress.pt", "eval.pt", "train.pt"):
        with pytest.raises(SystemExit, match="the name of a report contnet's commands write"):
            _compress(out, "--save", str(out / save), "--overwrite")
    assert "compress.json" not in {p.name for p in out.iterdir()}


def test_only_contnets_own_leftovers_of_this_host_are_cleared(tmp_path, capsys):
    out = tmp_path / "run"
    assert _train(out) == 0
    dead = int(_dead_pid())
    ours = temporary_path(out / "eval.json", dead)
    theirs = out / f".mydata.csv.tmp-{dead}"  # a user's file, of the old naming
    other_host = out / ours.name.replace("contnet-tmp-", "contnet-tmp-elsewhere-")
    for p in (ours, theirs, other_host):
        p.write_text("x")
    capsys.readouterr()
    assert cli.main(["eval", "--checkpoint", str(out / "checkpoint.pt"), "--schemes", "euler",
                     "--steps", "1", "--reference", "euler", "2"]) == 0  # fmt: skip
    assert not ours.exists() and theirs.exists() and other_host.exists()
    assert f"removed {ours.name}" in capsys.readouterr().out


def test_an_interrupted_demo_is_not_told_to_resume(tmp_path, monkeypatch, capsys):
    from contnet.cli import demo

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(demo, "load_dataset", interrupted)
    assert cli.main(["demo", "--out", str(tmp_path / "d")]) == 130
    err = capsys.readouterr().err
    assert "run it again" in err and "--resume" not in err
