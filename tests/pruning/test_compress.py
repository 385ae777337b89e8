"""Deep Compression storage: bit streams, relative-index CSR, Huffman, k-means, the file."""

import os
import random
import struct
import zlib

import numpy as np
import pytest
import torch
from torch import nn

from pruning.compress import (
    CentroidTuner,
    CompressedFormatError,
    compression_report,
    csr_decode,
    csr_encode,
    huffman,
    kmeans_1d,
    load_compressed,
    save_compressed,
    share_weights,
)
from pruning.compress.bitstream import ByteReader, check_bits, pack_fixed, unpack_fixed
from pruning.compress.csr import absolute_positions, relative_indices
from pruning.compress.fileformat import HEADER, best_index_bits, decode_file
from pruning.unstructured.masks import Masks, prune_weights


@pytest.fixture(autouse=True)
def seed():
    torch.manual_seed(0)
    np.random.seed(0)


def lenet_300_100() -> nn.Sequential:
    return nn.Sequential(
        nn.Flatten(), nn.Linear(784, 300), nn.ReLU(), nn.Linear(300, 100), nn.ReLU(), nn.Linear(100, 10)
    )


def random_pruned(model: nn.Module, keep: float) -> Masks:
    masks = Masks({n: torch.rand_like(p) < keep for n, p in model.named_parameters() if n.endswith("weight")})
    masks.apply_(model)
    return masks


def conv_bn_net() -> nn.Sequential:
    net = nn.Sequential(
        nn.Conv2d(1, 8, 3),
        nn.BatchNorm2d(8),
        nn.ReLU(),
        nn.Conv2d(8, 8, 3, bias=False),
        nn.BatchNorm2d(8),
        nn.ReLU(),
        nn.Flatten(),
        nn.Linear(8 * 4 * 4, 10),
    )
    net.train()
    with torch.no_grad():
        for _ in range(3):
            net(torch.randn(16, 1, 8, 8) * 2 + 1)  # non-trivial running stats
    return net.eval()


# --- bit streams, CSR, Huffman ----------------------------------------------------------
@pytest.mark.parametrize("bits", range(1, 17))
def test_fixed_width_packing_round_trips(bits):
    values = np.random.randint(0, 1 << bits, size=1001)
    data = pack_fixed(values, bits)
    assert len(data) == (1001 * bits + 7) // 8
    assert np.array_equal(unpack_fixed(data, bits, 1001), values)


def test_relative_indices_worked_example():
    # 2-bit indices: code 3 is a filler that skips 3 zeros; gaps 0, 0, 3, 14
    codes = relative_indices(np.array([0, 1, 5, 20]), 2)
    assert codes.tolist() == [0, 0, 3, 0, 3, 3, 3, 3, 2]
    assert absolute_positions(codes, 2, 21, 4).tolist() == [0, 1, 5, 20]
    with pytest.raises(CompressedFormatError):
        absolute_positions(codes, 2, 20, 4)  # points past the end
    with pytest.raises(CompressedFormatError):
        absolute_positions(np.array([0, 3]), 2, 21, 1)  # trailing filler


@pytest.mark.parametrize("bits", [1, 2, 3, 5, 8, 16])
@pytest.mark.parametrize("density", [0.0, 0.01, 0.3, 1.0])
def test_csr_round_trip_is_bit_exact(bits, density):
    w = torch.randn(37, 53)
    w[torch.rand_like(w) >= density] = 0
    csr = csr_encode(w, bits)
    assert csr.nnz == int((w != 0).sum())
    out = csr_decode(csr)
    assert torch.equal(out.view(torch.int32), w.view(torch.int32))


def test_huffman_round_trip_and_near_entropy():
    probs = np.array([0.5, 0.2, 0.1, 0.1, 0.05, 0.05])
    symbols = np.random.choice(6, size=50_000, p=probs)
    data = huffman.encode(symbols, 5)
    assert np.array_equal(huffman.decode(ByteReader(data), 5, symbols.size), symbols)
    entropy = -(probs * np.log2(probs)).sum()
    assert len(data) * 8 / symbols.size < entropy + 0.1


def test_huffman_edge_cases():
    for symbols, bits in [(np.array([7] * 10), 3), (np.array([1]), 1), (np.arange(1 << 12), 12)]:
        data = huffman.encode(symbols, bits, block=64)
        assert np.array_equal(huffman.decode(ByteReader(data), bits, symbols.size), symbols)
    assert huffman.encode(np.zeros(0, dtype=np.int64), 4) == b""


def test_huffman_lengths_are_limited_to_16_bits():
    freqs = np.array([1, 1] + [int(1.6**i) for i in range(40)])  # would need ~40-bit codes
    lengths = huffman.code_lengths(freqs)
    assert lengths.max() <= 16
    assert sum(2.0**-length for length in lengths if length) <= 1.0
    symbols = np.repeat(np.arange(freqs.size), np.minimum(freqs, 50))
    data = huffman.encode(symbols, 6)
    assert np.array_equal(huffman.decode(ByteReader(data), 6, symbols.size), symbols)


# --- k-means weight sharing -------------------------------------------------------------
def test_kmeans_assigns_nearest_of_at_most_2_pow_bits_centroids():
    values = torch.randn(5000)
    codebook, codes = kmeans_1d(values, 4)
    assert codebook.numel() <= 16 and torch.all(codebook[1:] > codebook[:-1])
    nearest = (values[:, None] - codebook[None, :]).abs().argmin(dim=1)
    assert torch.equal(codebook[codes], codebook[nearest])
    for j in range(codebook.numel()):  # a Lloyd fixed point: each centroid is its cluster's mean
        if torch.any(codes == j):
            assert codebook[j] == pytest.approx(float(values[codes == j].double().mean()), abs=1e-5)
    assert (codebook[codes] - values).abs().mean() < 0.1


def test_kmeans_is_lossless_when_values_are_already_shared():
    values = torch.tensor([0.5, -1.25, 0.5, 3.0, -1.25])
    codebook, codes = kmeans_1d(values, 2)
    assert torch.equal(codebook[codes], values)
    with pytest.raises(ValueError, match=r"\[1, 16\]"):
        kmeans_1d(values, 17)
    with pytest.raises(ValueError, match=r"\[1, 16\]"):
        kmeans_1d(values, 0)


def test_share_weights_defaults_conv8_fc5_and_keeps_zeros():
    net = conv_bn_net()
    prune_weights(net, sparsity=0.5)
    shared = share_weights(net)
    assert {n: s.bits for n, s in shared.items()} == {
        "0.weight": 6,
        "3.weight": 8,
        "7.weight": 5,
    }  # 0.weight: 36 values
    for name, p in net.named_parameters():
        if name in shared:
            assert torch.equal(p.detach(), shared[name].weight())
            assert int((p != 0).sum()) == shared[name].codes.numel()
    with pytest.raises(ValueError, match="not among"):
        share_weights(net, bits={"9": 4})


def test_centroid_gradient_is_the_sum_of_its_weights_gradients():
    model = lenet_300_100()
    prune_weights(model, sparsity=0.8)
    shared = share_weights(model, bits=3)
    tuner = CentroidTuner(model, shared)
    x, y = torch.randn(8, 784), torch.randint(0, 10, (8,))
    nn.functional.cross_entropy(model(x), y).backward()
    # reference: autograd through weight = codebook[codes] scattered into the mask
    books = {n: s.codebook.clone().requires_grad_(True) for n, s in shared.items()}
    weights = {}
    for n, s in shared.items():
        flat = torch.zeros(s.mask.numel()).index_put(
            (torch.nonzero(s.mask.reshape(-1)).reshape(-1),), books[n][s.codes]
        )
        weights[n] = flat.reshape(s.mask.shape)
    out = torch.func.functional_call(model, weights, (x,))
    nn.functional.cross_entropy(out, y).backward()
    for i, n in enumerate(tuner.names):
        torch.testing.assert_close(tuner.codebooks[i].grad, books[n].grad, rtol=1e-4, atol=1e-6)
        manual = torch.zeros_like(books[n]).index_add_(
            0, shared[n].codes, dict(model.named_parameters())[n].grad[shared[n].mask]
        )
        torch.testing.assert_close(tuner.codebooks[i].grad, manual)


def test_centroid_training_keeps_weights_on_the_codebook():
    model = lenet_300_100()
    prune_weights(model, sparsity=0.9)
    tuner = CentroidTuner(model, share_weights(model))
    opt = torch.optim.SGD(tuner.parameters(), lr=0.05)
    x, y = torch.randn(32, 784), torch.randint(0, 10, (32,))
    for _ in range(3):
        opt.zero_grad()
        model.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        opt.step()
        tuner.sync_(model)
    tuner.remove()
    for name, s in tuner.shared().items():
        w = dict(model.named_parameters())[name].detach()
        assert torch.equal(w, s.weight())
        assert torch.all(w[~s.mask] == 0)


# --- the file ---------------------------------------------------------------------------
@pytest.mark.parametrize("huff", [False, True])
def test_pruned_round_trip_is_bit_exact_with_buffers(tmp_path, huff):
    net = conv_bn_net()
    net.register_buffer("extra_bf16", torch.randn(3, dtype=torch.bfloat16))
    net.register_buffer("extra_f64", torch.randn(2, 2, dtype=torch.float64))
    net.register_buffer("flag", torch.tensor([True, False]))
    random_pruned(net, 0.2)
    report = save_compressed(net, tmp_path / "m.pkdc", index_bits=3, huffman=huff)
    state = load_compressed(tmp_path / "m.pkdc")
    for name, tensor in net.state_dict().items():
        assert state[name].dtype == tensor.dtype and state[name].shape == tensor.shape
        assert torch.equal(state[name].reshape(-1).view(torch.uint8), tensor.reshape(-1).view(torch.uint8)), name
    fresh = conv_bn_net()
    fresh.register_buffer("extra_bf16", torch.zeros(3, dtype=torch.bfloat16))
    fresh.register_buffer("extra_f64", torch.zeros(2, 2, dtype=torch.float64))
    fresh.register_buffer("flag", torch.tensor([False, False]))
    load_compressed(tmp_path / "m.pkdc", fresh)
    x = torch.randn(5, 1, 8, 8)
    assert torch.equal(fresh(x), net(x))
    assert report.file_bytes == os.path.getsize(tmp_path / "m.pkdc")
    assert [p.name for p in tmp_path.iterdir()] == ["m.pkdc"]  # no temporary file left


def test_quantized_round_trip_is_exact_to_the_codebook(tmp_path):
    model = lenet_300_100()
    random_pruned(model, 0.08)
    dense = {n: p.detach().clone() for n, p in model.named_parameters()}
    save_compressed(model, tmp_path / "q.pkdc", values="codebook", huffman=True, bits={"1": 4})
    state = load_compressed(tmp_path / "q.pkdc")
    for name in ("1.weight", "3.weight", "5.weight"):
        codebook, codes = kmeans_1d(dense[name][dense[name] != 0], 4 if name == "1.weight" else 5)
        expected = torch.zeros_like(dense[name])
        expected[dense[name] != 0] = codebook[codes]
        assert torch.equal(state[name], expected)
        assert len(torch.unique(state[name])) <= (16 if name == "1.weight" else 32) + 1
    assert torch.equal(state["1.bias"], dense["1.bias"])


def test_given_codebooks_are_stored_exactly(tmp_path):
    model = lenet_300_100()
    prune_weights(model, sparsity=0.9)
    shared = share_weights(model)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    save_compressed(model, tmp_path / "s.pkdc", values="codebook", shared=shared, huffman=True)
    loaded = load_compressed(tmp_path / "s.pkdc", lenet_300_100())
    for name, value in loaded.state_dict().items():
        assert torch.equal(value, before[name])


def test_fp16_values_are_close_and_smaller(tmp_path):
    model = lenet_300_100()
    random_pruned(model, 0.1)
    r32 = save_compressed(model, tmp_path / "a.pkdc")
    r16 = save_compressed(model, tmp_path / "b.pkdc", values="fp16")
    assert r16.file_bytes < r32.file_bytes
    state = load_compressed(tmp_path / "b.pkdc")
    torch.testing.assert_close(state["1.weight"], model[1].weight.detach(), rtol=1e-3, atol=1e-4)


@pytest.mark.parametrize("density", [0.02, 0.08, 0.5])
@pytest.mark.parametrize("huff", [False, True])
def test_auto_index_bits_is_lossless_and_near_the_best_width(tmp_path, density, huff):
    model = lenet_300_100()
    random_pruned(model, density)
    auto = save_compressed(model, tmp_path / "a.pkdc", index_bits="auto", huffman=huff)
    state = load_compressed(tmp_path / "a.pkdc")
    assert all(torch.equal(state[k], v) for k, v in model.state_dict().items())
    per_width = [compression_report(model, index_bits=b, huffman=huff).file_bytes for b in range(1, 17)]
    assert auto.file_bytes <= min(per_width) * 1.005 + 8  # the estimate picks (close to) the smallest


def test_best_index_bits_prefers_wide_codes_for_long_gaps():
    sparse = np.arange(0, 100_000, 1000)  # gaps of 999: 10 bits hold them without fillers
    dense = np.arange(0, 1000)  # no gaps at all: 1 bit
    assert best_index_bits(sparse, use_huffman=False) == 10
    assert best_index_bits(dense, use_huffman=False) == 1
    assert best_index_bits(np.array([], dtype=np.int64), use_huffman=True) == 1


def test_unused_centroids_are_not_stored(tmp_path):
    model = lenet_300_100()
    random_pruned(model, 0.1)
    shared = share_weights(model, bits=8)
    for sw in shared.values():  # a 256-entry codebook of which only 4 entries are used
        sw.codes = sw.codes % 4
    for name, sw in shared.items():
        with torch.no_grad():
            dict(model.named_parameters())[name].copy_(sw.weight())
    report = save_compressed(model, tmp_path / "c.pkdc", values="codebook", shared=shared)
    state = load_compressed(tmp_path / "c.pkdc")
    assert all(torch.equal(state[k], v) for k, v in model.state_dict().items())
    assert all(layer.encoding.endswith("cb2") for layer in report.layers if layer.name.endswith("weight"))


def test_fp16_codebooks_and_rest_are_half_precision_and_smaller(tmp_path):
    net = conv_bn_net()
    random_pruned(net, 0.3)
    with torch.no_grad():
        net[1].running_var.uniform_(0.5, 2.0)
    net[1].num_batches_tracked.fill_(123)
    shared = share_weights(net, bits=4)
    full = save_compressed(net, tmp_path / "a.pkdc", values="codebook", shared=shared)
    half = save_compressed(
        net, tmp_path / "b.pkdc", values="codebook", shared=shared, codebook_dtype="fp16", rest="fp16"
    )
    assert half.file_bytes < full.file_bytes
    state = load_compressed(tmp_path / "b.pkdc")
    for name, tensor in net.state_dict().items():
        assert state[name].dtype == tensor.dtype, name  # stored as fp16, loaded as the model's dtype
        if tensor.is_floating_point():
            assert torch.equal(state[name], tensor.half().float()), name
        else:
            assert torch.equal(state[name], tensor), name  # integer buffers stay exact
    # idempotent: a model loaded from the file saves to the same bytes
    again = load_compressed(tmp_path / "b.pkdc", conv_bn_net())
    save_compressed(
        again,
        tmp_path / "c.pkdc",
        values="codebook",
        shared=share_weights(again, bits=4, apply=False),
        codebook_dtype="fp16",
        rest="fp16",
    )
    assert (tmp_path / "c.pkdc").read_bytes() == (tmp_path / "b.pkdc").read_bytes()


def test_size_report_stages_for_lenet_300_100_at_8_percent():
    model = lenet_300_100()
    random_pruned(model, 0.08)
    report = compression_report(model, index_bits=5, values="codebook", huffman=True)
    total = report.total()
    assert total.dense == 266_610 * 4
    assert total.dense > total.pruned > total.quantized >= total.huffman
    ratios = total.ratios()
    assert 9 < ratios["pruned"] < 12  # 8% kept, fp32 values + 5-bit indices
    assert ratios["quantized"] > 33  # 5-bit codes
    assert report.ratio() > 35  # the whole file, headers included; random masks and weights
    rows = report.to_rows()
    assert rows[-1]["name"] == "total" and "huffman_ratio" in rows[0]
    assert "1.weight" in str(report) and "file on disk" in str(report)


@pytest.mark.parametrize(
    "options", [dict(), dict(huffman=True), dict(values="fp16"), dict(values="codebook", huffman=True)]
)
def test_empty_full_and_tiny_layers_in_every_mode(tmp_path, options):
    model = nn.Sequential(nn.Linear(30, 20), nn.Linear(20, 1), nn.Linear(1, 1), nn.Conv2d(2, 2, 1))
    with torch.no_grad():
        model[0].weight.zero_()  # everything pruned
        model[2].weight.fill_(0.5)  # a single weight
    save_compressed(model, tmp_path / "e.pkdc", index_bits=1, **options)
    state = load_compressed(tmp_path / "e.pkdc")
    assert torch.equal(state["0.weight"], torch.zeros(20, 30))
    assert torch.equal(state["2.weight"], torch.full((1, 1), 0.5))
    if options.get("values", "fp32") == "fp32":
        assert all(torch.equal(state[k], v) for k, v in model.state_dict().items())


def test_sparse_modules_cannot_be_saved(tmp_path):
    from pruning.unstructured.sparse import SparseLinear

    with pytest.raises(TypeError, match="before sparsify"):
        save_compressed(nn.Sequential(SparseLinear.from_dense(nn.Linear(4, 4))), tmp_path / "s.pkdc")


def test_load_into_the_wrong_model_says_what_differs(tmp_path):
    save_compressed(lenet_300_100(), tmp_path / "m.pkdc")
    wrong = nn.Sequential(
        nn.Flatten(), nn.Linear(784, 200), nn.ReLU(), nn.Linear(200, 100), nn.ReLU(), nn.Linear(100, 10)
    )
    with pytest.raises(ValueError, match="shape mismatches.*1.weight"):
        load_compressed(tmp_path / "m.pkdc", wrong)
    with pytest.raises(ValueError, match="missing"):
        load_compressed(tmp_path / "m.pkdc", nn.Sequential(nn.Linear(2, 2)))


def test_bit_widths_are_python_or_numpy_integers_in_1_16():
    for bits in (1, 16, np.int64(8), np.uint8(4)):
        assert check_bits(bits, "bits") == bits and type(check_bits(bits, "bits")) is int
    for bits in (0, 17, True, np.bool_(True), 8.0, np.float64(8), "8"):
        with pytest.raises(ValueError, match=r"bits=.*: must be an integer in \[1, 16\]"):
            check_bits(bits, "bits")


@pytest.mark.parametrize(
    "options, match",
    [
        (dict(index_bits=0), "index_bits"),
        (dict(index_bits=17), "index_bits"),
        (dict(values="codebook", bits=0), "bits"),
        (dict(values="codebook", bits={"1": 20}), "bits"),
        (dict(values="int8"), "values"),
        (dict(bits=4), "codebook"),
        (dict(index_bits="best"), "index_bits"),
        (dict(values="codebook", codebook_dtype="int8"), "codebook_dtype"),
        (dict(rest="bf16"), "rest"),
    ],
)
def test_bad_options_are_clear_errors(tmp_path, options, match):
    with pytest.raises(ValueError, match=match):
        save_compressed(lenet_300_100(), tmp_path / "x.pkdc", **options)
    assert not list(tmp_path.iterdir())


# --- bad input --------------------------------------------------------------------------
@pytest.fixture(scope="module")
def good_file(tmp_path_factory):
    torch.manual_seed(1)
    net = conv_bn_net()
    random_pruned(net, 0.3)
    path = tmp_path_factory.mktemp("fuzz") / "good.pkdc"
    save_compressed(net, path, values="codebook", huffman=True, bits=3)
    return path.read_bytes()


def with_header(payload: bytes, version: int = 1) -> bytes:
    """An independent writer of the documented header: magic, version, flags, length, CRC32."""
    fields = struct.pack("<4sBBQ", b"PKDC", version, 0, len(payload))
    return fields + struct.pack("<I", zlib.crc32(payload, zlib.crc32(fields[4:]))) + payload


def test_clear_errors_for_magic_version_truncation_and_checksum(good_file, tmp_path):
    decode_file(good_file)  # sanity: the good file decodes
    payload = good_file[HEADER.size :]
    assert decode_file(with_header(payload)).keys() == decode_file(good_file).keys()
    cases = {
        "not a prunekit": b"\x89PNG" + good_file[4:],
        "version 2 is not supported": with_header(payload, version=2),
        "truncated": good_file[:-1],
        "shorter than the 18-byte header": good_file[:10],
        "trailing data": good_file + b"\x00",
        "checksum": good_file[:-1] + bytes([good_file[-1] ^ 1]),
    }
    for expected, blob in cases.items():
        path = tmp_path / "bad.pkdc"
        path.write_bytes(blob)
        with pytest.raises(CompressedFormatError, match=expected):
            load_compressed(path)


@pytest.mark.timeout(60)
def test_fuzz_corruptions_never_crash_hang_or_load(good_file):
    rng = random.Random(0)
    n = len(good_file)
    for trial in range(600):
        blob = bytearray(good_file)
        kind = trial % 4
        if kind == 0:  # flip 1-8 random bits
            for _ in range(rng.randint(1, 8)):
                i = rng.randrange(n)
                blob[i] ^= 1 << rng.randrange(8)
        elif kind == 1:  # truncate
            blob = blob[: rng.randrange(n)]
        elif kind == 2:  # overwrite a random run of bytes
            i = rng.randrange(n)
            blob[i : i + rng.randint(1, 16)] = bytes(rng.randrange(256) for _ in range(16))
        else:  # insert or delete bytes
            i = rng.randrange(n)
            blob = blob[:i] + (bytes(rng.randint(1, 4)) if rng.random() < 0.5 else b"") + blob[i + rng.randint(1, 4) :]
        if bytes(blob) == good_file:
            continue
        with pytest.raises(CompressedFormatError):
            decode_file(bytes(blob))


@pytest.mark.timeout(60)
def test_fuzz_payload_parser_behind_a_valid_checksum(good_file):
    """Corruptions that pass the checksum (crafted files) must still fail cleanly or decode."""
    rng = random.Random(1)
    payload = good_file[HEADER.size :]
    outcomes = {"error": 0, "decoded": 0}
    for _ in range(400):
        blob = bytearray(payload)
        for _ in range(rng.randint(1, 4)):
            blob[rng.randrange(len(blob))] = rng.randrange(256)
        if rng.random() < 0.3:
            blob = blob[: rng.randrange(len(blob))]
        try:
            decode_file(with_header(bytes(blob)))
            outcomes["decoded"] += 1
        except CompressedFormatError:
            outcomes["error"] += 1
    assert outcomes["error"] > 0


@pytest.mark.slow
def test_fc6_sized_layer_encodes_and_decodes_in_seconds(tmp_path):
    import time

    layer = nn.Linear(25088, 4096)
    with torch.no_grad():
        layer.weight.mul_(torch.rand_like(layer.weight) < 0.04)
    start = time.perf_counter()
    save_compressed(layer, tmp_path / "fc6.pkdc", values="codebook", huffman=True)
    encoded = time.perf_counter() - start
    state = load_compressed(tmp_path / "fc6.pkdc")
    decoded = time.perf_counter() - start - encoded
    assert int((state["weight"] != 0).sum()) == int((layer.weight != 0).sum())
    assert encoded < 20 and decoded < 10, (encoded, decoded)
