"""Checkpoints: metadata, a round trip, refinement or projection on loading, truncated,
code-carrying, foreign and mismatched files refused, atomic writes, any module saved and
loaded back into a module the user builds."""

import json
import os
import pickle

import pytest
import torch

import contnet
from contnet import training as train
from contnet.training import checkpoint


def _checkpoint(tmp_path):
    net = contnet.ContinuousNet(1, 10, widths=(4, 8), n_basis=2, basis="fem_linear", scheme="heun")
    cfg = train.TrainConfig(widths=(4, 8), n_basis=2, basis="fem_linear", scheme="heun", epochs=2)
    return net, train.save_checkpoint(tmp_path / "ck.pt", net, config=cfg, epoch=0)


def test_checkpoint_metadata_and_round_trip(tmp_path):
    net, path = _checkpoint(tmp_path)
    meta = json.loads(path.with_suffix(".json").read_text())
    assert meta["format"] == "contnet-checkpoint" and meta["version"] == 1
    state = meta["state"]
    assert {k: state[k] for k in ("n_basis", "basis", "scheme", "n_steps")} == {
        "n_basis": [2, 2],
        "basis": ["fem_linear"] * 2,
        "scheme": ["heun"] * 2,
        "n_steps": [2, 2],
    }
    # every time-dependent layer's basis and every block's manifestation, by name
    assert state["layers"]["stages.1.unit.conv2"] == ["fem_linear", 2]
    assert state["layers"]["stages.0.unit.norm1"] == ["piecewise_constant", 1]
    assert state["blocks"] == {"stages.0": ["heun", 2], "stages.1": ["heun", 2]}
    again = train.model_from_checkpoint(train.load_checkpoint(path))
    for (k, a), (_, b) in zip(net.state_dict().items(), again.state_dict().items()):
        assert torch.equal(a, b), k
    refined = train.model_from_checkpoint(
        train.load_checkpoint(path), n_basis=3
    )  # 2 -> 3 by refinement
    assert refined.stages[0].unit.n_basis == 3
    with pytest.raises(train.CheckpointError, match="n_basis=4 is neither reached by refinement"):
        train.model_from_checkpoint(train.load_checkpoint(path), n_basis=4)


def test_truncated_tampered_and_mismatched_checkpoints_are_refused(tmp_path):
    _, path = _checkpoint(tmp_path)
    data = path.read_bytes()
    cut = tmp_path / "cut.pt"
    cut.write_bytes(data[: len(data) // 2])
    with pytest.raises(train.CheckpointError, match="cannot be read safely"):
        train.load_checkpoint(cut)

    class Exploit:
        def __reduce__(self):
            return (os.system, ("echo pwned",))

    evil = tmp_path / "evil.pt"
    torch.save(
        {"format": "contnet-checkpoint", "version": 1, "meta": "{}", "x": Exploit()},
        evil,
        pickle_protocol=pickle.HIGHEST_PROTOCOL,
    )
    with pytest.raises(train.CheckpointError, match="weights_only loading refuses"):
        train.load_checkpoint(evil)
    other = tmp_path / "other.pt"
    torch.save({"weights": torch.zeros(2)}, other)
    with pytest.raises(train.CheckpointError, match="not a contnet checkpoint"):
        train.load_checkpoint(other)
    payload = torch.load(path, weights_only=True)
    payload["version"] = 99
    torch.save(payload, tmp_path / "future.pt")
    with pytest.raises(train.CheckpointError, match="format version 99"):
        train.load_checkpoint(tmp_path / "future.pt")
    payload = torch.load(path, weights_only=True)
    meta = json.loads(payload["meta"])
    meta["state"]["n_basis"] = [3, 3]  # says K=3, holds K=2 weights
    payload["meta"] = json.dumps(meta)
    torch.save(payload, tmp_path / "mismatch.pt")
    with pytest.raises(train.CheckpointError, match="mismatch.pt.s metadata disagree"):
        train.model_from_checkpoint(train.load_checkpoint(tmp_path / "mismatch.pt"))
    payload = torch.load(path, weights_only=True)
    del payload["model"]["stages.1.unit.conv2.weight"]
    torch.save(payload, tmp_path / "missing.pt")
    with pytest.raises(
        train.CheckpointError, match=r"missing\.pt weights .*stages\.1\.unit\.conv2"
    ):
        train.model_from_checkpoint(train.load_checkpoint(tmp_path / "missing.pt"))


def test_checkpoint_of_a_model_projected_onto_another_family(tmp_path):
    # the weights of a model projected onto another basis family are read in that family
    torch.manual_seed(0)
    net = contnet.ContinuousNet(1, 10, widths=(4, 8), n_basis=3, basis="fem_linear").eval()
    contnet.project(net, 2, "legendre")
    x = torch.randn(2, 1, 8, 8)
    path = train.save_checkpoint(tmp_path / "ck.pt", net)
    again = train.model_from_checkpoint(train.load_checkpoint(path)).eval()
    assert again.stages[0].unit.basis == net.stages[0].unit.basis
    torch.testing.assert_close(again(x), net(x), rtol=0, atol=0)


def test_failed_write_leaves_previous_checkpoint_intact(tmp_path, monkeypatch):
    net, path = _checkpoint(tmp_path)
    before = path.read_bytes()

    def broken_save(obj, f, *a, **k):
        with open(f, "wb") as fh:
            fh.write(b"partial")
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", broken_save)
    with pytest.raises(OSError, match="disk full"):
        train.save_checkpoint(path, net, epoch=1)
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir() if ".tmp" in p.name] == []


def test_a_module_that_is_not_a_continuous_net_round_trips(tmp_path):
    torch.manual_seed(0)

    def build():
        unit = contnet.ConvUnit(3, n_basis=2, basis="legendre", norm="batch", preact=True)
        head = torch.nn.Sequential(torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten())
        return torch.nn.Sequential(contnet.ContinuousBlock(unit, scheme="heun"), head)

    model = build()
    contnet.refine(model)  # legendre 2 -> 4 nodes; its norms keep their one cell
    model[0].scheme = "rk4"
    path = checkpoint.save_checkpoint(tmp_path / "mine.pt", model)
    payload = checkpoint.load_checkpoint(path)
    with pytest.raises(
        checkpoint.CheckpointError, match=r"mine\.pt holds a .*Sequential.*load_model_state"
    ):
        checkpoint.model_from_checkpoint(payload)
    again = checkpoint.load_model_state(payload, build())  # built at 2 nodes, as the user did
    assert again[0].unit.n_basis == 4 and again[0].n_steps == 4 and again[0].scheme == "rk4"
    x = torch.randn(2, 3, 5, 5)
    model.eval(), again.eval()
    with torch.no_grad():
        torch.testing.assert_close(again(x), model(x), rtol=0, atol=0)
    wrong = torch.nn.Sequential(contnet.ContinuousBlock(contnet.ConvUnit(4, n_basis=2)))
    with pytest.raises(checkpoint.CheckpointError, match=r"mine\.pt weights do not fit"):
        checkpoint.load_model_state(payload, wrong)


def test_a_checkpoint_that_does_not_fit_leaves_the_users_module_as_it_was(tmp_path):
    # the saved model was refined (K 1 -> 2) and has another head: loading it into a fresh
    # module would refine that module's layers, then fail on the head
    torch.manual_seed(0)
    saved = torch.nn.Sequential(
        contnet.ContinuousBlock(contnet.MLPUnit(4, n_basis=1)), torch.nn.Linear(4, 3)
    )
    contnet.refine(saved)
    path = train.save_checkpoint(tmp_path / "ck.pt", saved)
    mine = torch.nn.Sequential(
        contnet.ContinuousBlock(contnet.MLPUnit(4, n_basis=1)), torch.nn.Linear(4, 5)
    )
    params = list(mine.parameters())
    values = [p.detach().clone() for p in params]
    with pytest.raises(train.CheckpointError, match="do not fit"):
        train.load_model_state(train.load_checkpoint(path), mine)
    assert mine[0].unit.n_basis == 1 and mine[0].n_steps == 1
    assert all(p is q for p, q in zip(params, mine.parameters()))
    assert all(torch.equal(p, v) for p, v in zip(params, values))


def test_loading_something_that_is_not_a_checkpoint_raises_checkpoint_error():
    for payload in (None, {}, {"meta": "x", "model": {}}):
        with pytest.raises(train.CheckpointError, match="as load_checkpoint returns it"):
            train.load_model_state(payload, torch.nn.Linear(2, 2))
        with pytest.raises(train.CheckpointError, match="as load_checkpoint returns it"):
            train.model_from_checkpoint(payload)


@pytest.mark.parametrize(
    "tolerances", [{"stages.0": [1e-3, None]}, {"stages.0": ["a", None, False]}, []]
)
def test_a_tampered_tolerance_record_is_refused(tmp_path, tolerances):
    _, path = _checkpoint(tmp_path)
    payload = torch.load(path, weights_only=True)
    meta = json.loads(payload["meta"])
    meta["state"]["tolerances"] = tolerances
    payload["meta"] = json.dumps(meta)
    torch.save(payload, tmp_path / "tampered.pt")
    with pytest.raises(train.CheckpointError, match="tolerances"):
        train.load_checkpoint(tmp_path / "tampered.pt")
