"""Irrep and Irreps: e3nn's grammar, canonical text, sizes, ordering and layout."""

import numpy as np
import pytest
import tensorflow as tf
from hypothesis import given, settings
from hypothesis import strategies as st

from tfequivariant import Irrep, Irreps


# --- Irrep -------------------------------------------------------------------------
@pytest.mark.parametrize(
    "text,l,p",
    [
        ("0e", 0, 1),
        ("1o", 1, -1),
        ("2e", 2, 1),
        ("1y", 1, -1),
        ("2y", 2, 1),
        ("3y", 3, -1),
        (" 11o ", 11, -1),
    ],
)
def test_irrep_parse(text, l, p):
    ir = Irrep(text)
    assert (ir.l, ir.p) == (l, p)
    assert ir == Irrep(l, p) == (l, p)
    assert ir.dim == 2 * l + 1
    assert str(ir) == f"{l}{'e' if p == 1 else 'o'}"


def test_irrep_constructors_and_equality():
    assert Irrep((1, -1)) == Irrep("1o") == "1o"
    assert Irrep(Irrep("2e")) == Irrep(2, 1)
    assert Irrep("1o") != Irrep("1e")
    assert Irrep("1o") != "not an irrep"
    assert len({Irrep("1o"), Irrep(1, -1), Irrep("1y")}) == 1
    assert Irrep("0e").is_scalar() and not Irrep("0o").is_scalar() and not Irrep("1e").is_scalar()


def test_irrep_ordering():
    # e3nn (PyTorch) sorts by (l, p): 0o < 0e < 1o < 1e.
    irs = [Irrep("1e"), Irrep("0e"), Irrep("1o"), Irrep("0o"), Irrep("2o")]
    assert [str(ir) for ir in sorted(irs)] == ["0o", "0e", "1o", "1e", "2o"]
    assert Irrep("0o") < Irrep("0e") < Irrep("1o") < Irrep("1e")


def test_irrep_product_selection_rule():
    assert list(Irrep("1o") * Irrep("2e")) == [Irrep("1o"), Irrep("2o"), Irrep("3o")]
    assert list(Irrep("0e") * Irrep("1o")) == [Irrep("1o")]
    assert list(Irrep("2o") * Irrep("2o")) == [Irrep(l, 1) for l in range(5)]


def test_irrep_arithmetic():
    assert 3 * Irrep("1o") == Irreps("3x1o")
    assert Irrep("0e") + Irrep("1o") == Irreps("0e+1o")
    assert Irrep("0e") + "2x1o" == Irreps("1x0e+2x1o")


@pytest.mark.parametrize(
    "args",
    [
        ("1q",),
        ("-1e",),
        ("1.5e",),
        ("e",),
        ("1",),
        ("",),
        (-1, 1),
        (1, 0),
        (1, 2),
        (1,),
        (1.0, 1),
        (True, 1),
        (1, True),
    ],
)
def test_irrep_malformed(args):
    with pytest.raises(ValueError) as info:
        Irrep(*args)
    assert repr(args[0]) in str(info.value) or repr(args) in str(info.value)


# --- Irreps: grammar and text -----------------------------------------------------------
@pytest.mark.parametrize(
    "text,blocks,canonical",
    [
        ("16x0e+8x1o", [(16, (0, 1)), (8, (1, -1))], "16x0e+8x1o"),
        ("1o", [(1, (1, -1))], "1x1o"),
        ("1y + 2y", [(1, (1, -1)), (1, (2, 1))], "1x1o+1x2e"),
        ("0x1e", [(0, (1, 1))], "0x1e"),
        (" 16x0e  +  8x1o ", [(16, (0, 1)), (8, (1, -1))], "16x0e+8x1o"),
        ("16 x 0e+ 8 x1o", [(16, (0, 1)), (8, (1, -1))], "16x0e+8x1o"),
        ("2x0e+0e+2x0e", [(2, (0, 1)), (1, (0, 1)), (2, (0, 1))], "2x0e+1x0e+2x0e"),
        ("", [], ""),
        ("   ", [], ""),
        ("10x12o", [(10, (12, -1))], "10x12o"),
    ],
)
def test_irreps_parse_and_canonical_text(text, blocks, canonical):
    irreps = Irreps(text)
    assert [(mul, (ir.l, ir.p)) for mul, ir in irreps] == blocks
    assert str(irreps) == canonical
    assert Irreps(str(irreps)) == irreps


@pytest.mark.parametrize(
    "text",
    ["1x", "x1e", "1q", "-1e", "2x-1o", "1.5e", "1e+", "+1e", "1e++2o", "2x", "1x1e1o", "1xx1e", "1e 2o"],
)
def test_irreps_malformed_strings(text):
    with pytest.raises(ValueError) as info:
        Irreps(text)
    assert repr(text) in str(info.value)  # names what was received


@pytest.mark.parametrize(
    "arg,fragment",
    [
        ([(-1, "0e")], "-1"),
        ([(1, (-1, 1))], "-1"),
        ([(1.0, "0e")], "1.0"),
        ([(1, "1q")], "1q"),
        ([3], "3"),
        (3.5, "3.5"),
        ([(1, -1)], "(1, -1)"),  # an (l, p) pair where a (mul, ir) pair is expected
    ],
)
def test_irreps_bad_lists(arg, fragment):
    with pytest.raises(ValueError) as info:
        Irreps(arg)
    assert fragment in str(info.value)


def test_irreps_constructors():
    want = Irreps("2x0e+1x1o")
    assert Irreps([(2, "0e"), (1, "1o")]) == want
    assert Irreps([(2, (0, 1)), (1, Irrep(1, -1))]) == want
    assert Irreps(["0e", "0e", "1o"]) == Irreps("0e+0e+1o")
    assert Irreps(want) == want
    assert Irreps(Irrep("1o")) == Irreps("1x1o")
    assert Irreps(None) == Irreps("") == Irreps([])


# --- sizes and structure -----------------------------------------------------------------
def test_irreps_sizes():
    irreps = Irreps("16x0e+8x1o+0x2e+3x2o")
    assert irreps.dim == 16 + 24 + 0 + 15
    assert irreps.num_irreps == 27
    assert irreps.lmax == 2
    assert len(irreps) == 4
    assert irreps.ls == [0] * 16 + [1] * 8 + [2] * 3
    assert irreps.count("1o") == 8 and irreps.count("2e") == 0 and irreps.count("3e") == 0
    assert "1o" in irreps and Irrep("2e") in irreps and "1e" not in irreps and "nonsense" not in irreps
    assert irreps.slices() == [slice(0, 16), slice(16, 40), slice(40, 40), slice(40, 55)]
    assert Irreps("").dim == 0 and Irreps("").num_irreps == 0 and Irreps("").slices() == []
    with pytest.raises(ValueError, match="empty"):
        Irreps("").lmax


def test_irreps_blocks_and_indexing():
    irreps = Irreps("16x0e+8x1o+2x2e")
    mul, ir = irreps[1]
    assert (mul, ir) == (8, Irrep("1o"))
    assert irreps[1].mul == 8 and irreps[1].ir == Irrep("1o") and irreps[1].dim == 24
    assert isinstance(irreps[1:], Irreps) and irreps[1:] == Irreps("8x1o+2x2e")
    assert irreps[::-1] == Irreps("2x2e+8x1o+16x0e")


def test_irreps_arithmetic():
    assert Irreps("0e") + Irreps("1o") == Irreps("0e+1o")
    assert Irreps("0e") + "1o" == Irreps("0e+1o")
    assert "1o" + Irreps("0e") == Irreps("1o+0e")
    assert Irreps("0e+1o") * 2 == Irreps("0e+1o+0e+1o")
    assert 2 * Irreps("1o") == Irreps("1o+1o")


def test_irreps_equality_and_hash():
    a = Irreps("2x0e+1o")
    assert a == "2x0e+1x1o" and a == Irreps("2x0e + 1x1o")
    assert hash(a) == hash(Irreps("2x0e+1x1o"))
    assert a != Irreps("2x0e+1e")
    assert Irreps("1o+1o") != Irreps("2x1o")  # e3nn: blocks are compared, not contents
    assert Irreps("0x1o") != Irreps("")
    assert a != "not irreps" and a != 3
    assert len({a, Irreps("2x0e+1x1o"), Irreps("1o")}) == 2
    assert {a: 1}[Irreps("2x0e+1x1o")] == 1


def test_simplify():
    # e3nn's examples plus zero multiplicities.
    assert Irreps("1e + 1e + 0e").simplify() == Irreps("2x1e+1x0e")
    assert Irreps("1e + 1e + 0e + 1e").simplify() == Irreps("2x1e+1x0e+1x1e")
    assert Irreps("0x1e + 1e + 0x2o + 1e").simplify() == Irreps("2x1e")
    assert Irreps("2x0e+0x1o+3x0e").simplify() == Irreps("5x0e")
    assert Irreps("").simplify() == Irreps("")
    assert Irreps("1e+1e").remove_zero_multiplicities() == Irreps("1e+1e")
    assert Irreps("0x0e+1e+0x2o").remove_zero_multiplicities() == Irreps("1e")


def test_sort_as_e3nn():
    # e3nn's docstring example.
    s = Irreps("1e + 0e + 1e").sort()
    assert s.irreps == Irreps("1x0e+1x1e+1x1e") and tuple(s.p) == (1, 0, 2) and tuple(s.inv) == (1, 0, 2)
    irreps = Irreps("3x2o+0e+1o+2x0o+1e+4x0e")
    s = irreps.sort()
    assert s.irreps == Irreps("2x0o+1x0e+4x0e+1x1o+1x1e+3x2o")  # stable: 0e before 4x0e
    assert tuple(s.inv) == (3, 1, 5, 2, 4, 0)
    assert tuple(s.p) == (5, 1, 3, 0, 4, 2)
    irreps_, p, inv = s  # a plain 3-tuple too
    for old, new in enumerate(p):
        assert irreps_[new] == irreps[old]
        assert inv[new] == old


def test_sort_permutes_features():
    irreps = Irreps("2x1e+3x0e+1o+0o")
    x = np.arange(irreps.dim, dtype=np.float64)[None]
    s = irreps.sort()
    blocks = [x[:, sl] for sl in irreps.slices()]
    sorted_x = np.concatenate([blocks[i] for i in s.inv], -1)
    for (mul, ir), sl, old in zip(s.irreps, s.irreps.slices(), s.inv):
        np.testing.assert_array_equal(sorted_x[:, sl], x[:, irreps.slices()[old]])


def test_regroup():
    assert Irreps("1e+0e+1e+0x2o").regroup() == Irreps("1x0e+2x1e")
    assert Irreps("2x1o+0e+3x1o+0o+0e").regroup() == Irreps("1x0o+2x0e+5x1o")
    assert Irreps("").regroup() == Irreps("")


def test_filter():
    irreps = Irreps("2x0e+1o+3x2e+0e")
    assert irreps.filter(keep="0e") == Irreps("2x0e+0e")
    assert irreps.filter(drop="0e+2e") == Irreps("1o")
    assert irreps.filter(keep=lambda b: b.ir.l > 0) == Irreps("1o+3x2e")
    with pytest.raises(ValueError):
        irreps.filter(keep="0e", drop="1o")


def test_spherical_harmonics_irreps():
    assert Irreps.spherical_harmonics(3) == Irreps("1x0e+1x1o+1x2e+1x3o")
    assert Irreps.spherical_harmonics(3, p=1) == Irreps("0e+1e+2e+3e")
    assert Irreps.spherical_harmonics(0) == Irreps("0e")
    for bad in (-1, 1.5, True):
        with pytest.raises(ValueError, match="lmax"):
            Irreps.spherical_harmonics(bad)
    with pytest.raises(ValueError, match="p"):
        Irreps.spherical_harmonics(2, p=0)


# --- split / merge ---------------------------------------------------------------
def test_split_layout_is_mul_ir_row_major():
    irreps = Irreps("2x0e+3x1o+1x2e+0x1e")
    x = np.arange(2 * irreps.dim, dtype=np.float32).reshape(2, irreps.dim)
    blocks = irreps.split(x)
    assert [tuple(b.shape) for b in blocks] == [(2, 2, 1), (2, 3, 3), (2, 1, 5), (2, 0, 3)]
    np.testing.assert_array_equal(np.asarray(blocks[1])[1], np.arange(2, 11).reshape(3, 3) + irreps.dim)
    merged = irreps.merge(blocks)
    np.testing.assert_array_equal(np.asarray(merged), x)


def test_split_merge_leading_dims_and_graph_mode():
    irreps = Irreps("4x0e+2x1o+1x2e")
    x = np.random.default_rng(0).normal(size=(2, 3, irreps.dim)).astype(np.float32)
    blocks = irreps.split(x)
    assert [tuple(b.shape) for b in blocks] == [(2, 3, 4, 1), (2, 3, 2, 3), (2, 3, 1, 5)]
    np.testing.assert_array_equal(np.asarray(irreps.merge(blocks)), x)

    @tf.function(input_signature=[tf.TensorSpec([None, irreps.dim], tf.float32)], jit_compile=True)
    def round_trip(v):
        b = irreps.split(v)
        return irreps.merge([2.0 * t for t in b])

    np.testing.assert_array_equal(round_trip(x[0]).numpy(), 2 * x[0])


def test_split_merge_errors():
    irreps = Irreps("2x0e+1x1o")
    with pytest.raises(ValueError) as info:
        irreps.split(np.zeros((4, 6)))
    assert "5" in str(info.value) and "(4, 6)" in str(info.value)
    with pytest.raises(ValueError, match="block"):
        irreps.merge([np.zeros((4, 2, 1))])
    with pytest.raises(ValueError, match=r"1x1o.*\(4, 3, 1\)"):
        irreps.merge([np.zeros((4, 2, 1)), np.zeros((4, 3, 1))])
    with pytest.raises(ValueError):
        Irreps("").merge([])


# --- properties -------------------------------------------------------------------
irrep_st = st.tuples(st.integers(0, 7), st.sampled_from([1, -1]))
irreps_st = st.lists(st.tuples(st.integers(0, 5), irrep_st), max_size=6)


@settings(max_examples=200, deadline=None, derandomize=True, database=None)
@given(irreps_st)
def test_text_round_trip(blocks):
    irreps = Irreps(blocks)
    text = str(irreps)
    assert Irreps(text) == irreps
    assert Irreps(text.replace("+", " + ")) == irreps
    assert irreps.dim == sum(mul * (2 * l + 1) for mul, (l, _) in blocks)
    assert irreps.num_irreps == sum(mul for mul, _ in blocks)
    s = irreps.sort()
    assert list(s.irreps) == sorted(irreps, key=lambda b: b.ir)  # stable by (l, p)
    assert sorted(s.p) == list(range(len(irreps)))
    assert all(s.inv[s.p[i]] == i for i in range(len(irreps)))
    reg = irreps.regroup()
    assert [ir for _, ir in reg] == sorted({ir for mul, ir in irreps if mul > 0})
    assert all(reg.count(ir) == irreps.count(ir) for _, ir in irreps)


@settings(max_examples=40, deadline=None, derandomize=True, database=None)
@given(irreps_st.filter(lambda b: len(b) > 0), st.integers(0, 3))
def test_split_merge_round_trip(blocks, n):
    irreps = Irreps(blocks)
    x = np.random.default_rng(n).normal(size=(n, irreps.dim))
    parts = irreps.split(x)
    assert len(parts) == len(irreps)
    for (mul, ir), part, sl in zip(irreps, parts, irreps.slices()):
        part = np.asarray(part)
        assert part.shape == (n, mul, ir.dim)
        np.testing.assert_array_equal(part.reshape(n, mul * ir.dim), x[:, sl])
    np.testing.assert_array_equal(np.asarray(irreps.merge(parts)), x)
