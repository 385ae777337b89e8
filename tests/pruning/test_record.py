"""PruningRecord: JSON, replay on a fresh dense model, save/load with weights_only."""

from __future__ import annotations

import json

import pytest
import torch

import pruning
from pruning.structured.record import PruningRecord, RecordEntry
from tests.pruning.test_graph import Concat, LayerScale, OptionA, X
from tests.pruning.test_structured import outputs, seq_net


def pruned(builder, ratio=0.5):
    torch.manual_seed(0)
    model = builder()
    return model, pruning.prune_filters(model, X if builder is not seq_net else torch.randn(1, 3, 16, 16), ratio)


def test_record_entries_say_what_was_cut():
    model, record = pruned(Concat)
    e = {(x.name, x.dim): x for x in record.entries}
    assert e[("a", 0)].size == 4 and len(e[("a", 0)].keep) == 2
    assert e[("c", 1)].size == 10 and len(e[("c", 1)].keep) == 5
    assert e[("bn", 0)].keep == e[("c", 1)].keep  # BN and the consumer lose the same channels
    assert record.shapes["c.weight"] == list(model.c.weight.shape) == [2, 5, 1, 1]
    assert record.channels()["a"] == (2, 4)


def test_record_shapes_are_the_state_dict_shapes_of_cut_modules():
    model, record = pruned(OptionA)
    state = {k: list(v.shape) for k, v in model.state_dict().items()}
    cut = {e.name for e in record.entries}
    assert record.shapes == {k: v for k, v in state.items() if k.rpartition(".")[0] in cut}
    assert "bn.num_batches_tracked" in record.shapes and "conv2.weight" in record.shapes


def test_json_roundtrip_is_lossless():
    _, record = pruned(OptionA)
    text = json.dumps(record.to_dict())
    back = PruningRecord.from_dict(json.loads(text))
    assert back == record and PruningRecord.from_json(record.to_json()) == record


@pytest.mark.parametrize("builder", [Concat, OptionA, LayerScale])
def test_replay_then_strict_load_gives_identical_outputs(builder):
    model, record = pruned(builder)
    torch.manual_seed(1)  # a different initialisation: the weights come from the state dict
    fresh = pruning.apply_record(builder(), record.to_dict())
    fresh.load_state_dict(model.state_dict(), strict=True)
    assert torch.equal(outputs(fresh, X), outputs(model, X))


def test_save_and_load_with_weights_only(tmp_path):
    model, record = pruned(LayerScale)
    path = tmp_path / "m.pt"
    pruning.save_pruned(model, record, path)
    payload = torch.load(path, weights_only=True)
    assert set(payload) == {"format", "version", "record", "state_dict"}
    loaded = pruning.load_pruned(LayerScale, path)
    assert loaded.gamma.shape == (4, 1, 1)
    assert torch.equal(outputs(loaded, X), outputs(model, X))
    assert pruning.structured.read_record(path) == record


def test_load_refuses_other_files(tmp_path):
    path = tmp_path / "plain.pt"
    torch.save({"state_dict": {}}, path)
    with pytest.raises(ValueError, match="not a prunekit pruned-model file"):
        pruning.load_pruned(seq_net, path)


def test_newer_versions_are_refused():
    with pytest.raises(ValueError, match="newer"):
        PruningRecord.from_dict({"version": 99, "entries": []})


def test_replay_checks_names_and_sizes():
    _, record = pruned(seq_net)
    bad = PruningRecord([RecordEntry("features.7", "module", 0, (0,), 4)])
    with pytest.raises(TypeError, match="no pruning handler"):
        pruning.apply_record(seq_net(), bad)
    with pytest.raises(ValueError, match="does not have"):
        pruning.apply_record(seq_net(), PruningRecord([RecordEntry("nope", "module", 0, (0,), 4)]))
    wrong = PruningRecord(record.entries, {"features.0.weight": [1, 1, 1, 1]})
    with pytest.raises(ValueError, match="shapes differ"):
        pruning.apply_record(seq_net(), wrong)


def test_chained_steps_replay_in_order(tmp_path):
    model, r1 = pruned(seq_net, 0.25)
    r2 = pruning.prune_filters(model, torch.randn(1, 3, 16, 16), 0.5)
    path = tmp_path / "two.pt"
    pruning.save_pruned(model, r1 + r2, path)
    loaded = pruning.load_pruned(seq_net, path)
    assert loaded.features[0].out_channels == 3
    x = torch.randn(1, 3, 16, 16)
    assert torch.equal(outputs(loaded, x), outputs(model, x))


def with_entry(record: PruningRecord, i: int, **change) -> PruningRecord:
    """``record`` with entry ``i`` changed (a corrupt or foreign record)."""
    entries = list(record.entries)
    e = entries[i]
    entries[i] = RecordEntry(**{**dict(name=e.name, kind=e.kind, dim=e.dim, keep=e.keep, size=e.size), **change})
    return PruningRecord(entries, record.shapes)


@pytest.mark.parametrize(
    "change, message",
    [
        (dict(keep=(1, 2, 3, 8)), r"entry 0 \(module 'features.0', dim 0\): keep indices \[8\] are outside \[0, 8\)"),
        (dict(keep=(-1, 2, 3, 5)), r"entry 0 \(module 'features.0', dim 0\): keep indices \[-1\] are outside"),
        (dict(keep=(1, 2, 2, 5)), r"entry 0 \(module 'features.0', dim 0\): keep lists indices \[2\] more than once"),
        (dict(keep=(2, 1, 3, 5)), r"entry 0 \(module 'features.0', dim 0\): keep indices are not in increasing order"),
        (dict(dim=2), r"entry 0 \(module 'features.0', dim 2\): Conv2d channels are cut along dim 0 or 1"),
        (dict(name="features.9"), r"entry 0 \(module 'features.9', dim 0\): this model does not have a module"),
        (dict(kind="layer"), r"entry 0 \(layer 'features.0', dim 0\): kind must be 'module' or 'param'"),
        (dict(size=16), r"entry 0 \(module 'features.0', dim 0\) expects 16 channels, the model has 8"),
    ],
)
def test_replay_names_the_entry_that_does_not_fit(change, message):
    from pruning.structured.record import RecordMismatchError

    _, record = pruned(seq_net)
    model = seq_net()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(RecordMismatchError, match=message) as err:
        pruning.apply_record(model, with_entry(record, 0, **change))
    assert isinstance(err.value, ValueError)
    if "expects" not in message:  # structural checks run before the first cut
        assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_replay_checks_later_entries_and_parameter_dims():
    from pruning.structured.record import RecordMismatchError

    _, record = pruned(seq_net)
    with pytest.raises(RecordMismatchError, match=r"entry 3 \(module 'features.4', dim 0\): keep indices \[16, 20\]"):
        pruning.apply_record(seq_net(), with_entry(record, 3, keep=(0, 1, 16, 20)))
    with pytest.raises(
        RecordMismatchError,
        match=r"entry 1 \(module 'features.1', dim 1\): BatchNorm2d channels are cut "
        r"along dim 0 \(",
    ):
        pruning.apply_record(seq_net(), with_entry(record, 1, dim=1))
    _, scale = pruned(LayerScale)
    i = next(i for i, e in enumerate(scale.entries) if e.kind == "param")
    with pytest.raises(RecordMismatchError, match=rf"entry {i} \(param 'gamma', dim 3\): 'gamma' has 3 dims"):
        pruning.apply_record(LayerScale(), with_entry(scale, i, dim=3))
    with pytest.raises(
        RecordMismatchError,
        match=rf"entry {i} \(param 'beta', dim 0\): this model does not have a "
        r"parameter or buffer 'beta'",
    ):
        pruning.apply_record(LayerScale(), with_entry(scale, i, name="beta"))


def test_malformed_records_are_named():
    from pruning.structured.record import RecordError

    with pytest.raises(RecordError, match=r"entry 1 is malformed \(KeyError: 'keep'\)"):
        PruningRecord.from_dict(
            {
                "version": 1,
                "entries": [
                    {"name": "a", "kind": "module", "dim": 0, "keep": [0], "size": 2},
                    {"name": "b", "kind": "module", "dim": 0, "size": 2},
                ],
            }
        )


def test_load_pruned_names_the_file_when_weights_do_not_fit(tmp_path):
    from pruning.structured.record import RecordMismatchError

    model, record = pruned(LayerScale)
    path = tmp_path / "m.pt"
    pruning.save_pruned(model, record, path)
    payload = torch.load(path, weights_only=True)
    assert payload["state_dict"]["conv.weight"].shape == (4, 4, 3, 3)
    payload["state_dict"]["conv.weight"] = torch.zeros(5, 4, 3, 3)
    torch.save(payload, path)
    with pytest.raises(RecordMismatchError, match=r"m.pt: the weights do not fit the model rebuilt from its record"):
        pruning.load_pruned(LayerScale, path)
