"""Irreducible representations of O(3) and direct sums of them.

The grammar, canonical text, ordering and feature layout are e3nn's, so that an
irreps string means the same thing in both libraries:

* an irrep is ``l`` followed by a parity: ``e`` (+1), ``o`` (-1) or ``y``
  (``(-1)**l``, the parity of the spherical harmonic of degree ``l``);
* a direct sum is ``[mul "x"] irrep`` terms joined by ``+``, e.g.
  ``"16x0e + 8x1o"``; its canonical text is ``"16x0e+8x1o"``;
* sorting is by ``(l, p)``, so ``0o < 0e < 1o < 1e``;
* a feature tensor is ``[..., irreps.dim]``; each block ``mul x (l, p)`` is
  stored as ``[mul, 2l+1]`` row-major ("mul_ir").
"""

import collections
import re

import numpy as np

__all__ = ["Irrep", "Irreps"]

_IRREP_RE = re.compile(r"^(\d+)([eoy])$")


def _parse_parity(p, received):
    if p in (1, -1) and not isinstance(p, bool):
        return int(p)
    raise ValueError(
        f"An irrep's parity must be +1 or -1 (or 'e', 'o', 'y' in a string). "
        f"Received: {received!r}"
    )


class Irrep(tuple):
    """An irreducible representation of O(3): degree ``l`` and parity ``p``.

    Args:
        l: the degree (an int >= 0), or a string such as ``"1o"``, ``"2e"``,
            ``"3y"``, or an ``Irrep`` or ``(l, p)`` pair.
        p: the parity, +1 or -1; required when ``l`` is an int.

    Example:
        >>> Irrep("1o").dim
        3
        >>> str(Irrep(2, 1))
        '2e'
    """

    def __new__(cls, l, p=None):
        if isinstance(l, Irrep) and p is None:
            return l
        received = l if p is None else (l, p)
        if isinstance(l, str) and p is None:
            m = _IRREP_RE.match(l.strip().replace(" ", ""))
            if m is None:
                raise ValueError(
                    f"Cannot parse an irrep from {l!r}: expected an integer degree "
                    f"followed by a parity e, o or y, such as '0e', '1o' or '2y'."
                )
            deg = int(m.group(1))
            p = {"e": 1, "o": -1, "y": (-1) ** deg}[m.group(2)]
            l = deg
        elif isinstance(l, (tuple, list)) and p is None and len(l) == 2:
            l, p = l
        if isinstance(l, (bool, np.bool_)) or not isinstance(l, (int, np.integer)):
            raise ValueError(f"An irrep's degree l must be an int. Received: {received!r}")
        if l < 0:
            raise ValueError(f"An irrep's degree l must be >= 0. Received: {received!r}")
        if p is None:
            raise ValueError(f"An irrep needs a parity p (+1 or -1). Received: {received!r}")
        p = _parse_parity(p, received)
        return super().__new__(cls, (int(l), p))

    @property
    def l(self):  # noqa: E743 - the papers' name
        return self[0]

    @property
    def p(self):
        return self[1]

    @property
    def dim(self):
        return 2 * self.l + 1

    def is_scalar(self):
        """True for ``0e``."""
        return self.l == 0 and self.p == 1

    def __repr__(self):
        return f"{self.l}{'e' if self.p == 1 else 'o'}"

    __str__ = __repr__

    def __mul__(self, other):
        """The irreps in the tensor product of two irreps (Clebsch–Gordan selection rule)."""
        other = Irrep(other)
        p = self.p * other.p
        for l in range(abs(self.l - other.l), self.l + other.l + 1):
            yield Irrep(l, p)

    def __rmul__(self, mul):
        if not isinstance(mul, (int, np.integer)):
            return NotImplemented
        return Irreps([(mul, self)])

    def __add__(self, other):
        return Irreps(self) + Irreps(other)

    def __radd__(self, other):
        return Irreps(other) + Irreps(self)

    def __lt__(self, other):
        return tuple(self) < tuple(Irrep(other))

    def __gt__(self, other):
        return tuple(self) > tuple(Irrep(other))

    def __le__(self, other):
        return tuple(self) <= tuple(Irrep(other))

    def __ge__(self, other):
        return tuple(self) >= tuple(Irrep(other))

    def __eq__(self, other):
        try:
            return tuple(self) == tuple(Irrep(other))
        except (ValueError, TypeError):
            return False

    def __ne__(self, other):
        return not self == other

    def __hash__(self):
        return hash(tuple(self))

    def D_from_angles(self, alpha, beta, gamma, k=0):
        """Representation matrix ``p**k D^l(alpha, beta, gamma)`` (k=1 for an inversion)."""
        from tfequivariant import so3

        D = so3.wigner_D(self.l, alpha, beta, gamma)
        k = np.asarray(k)
        return (self.p ** k)[..., None, None] * D if k.ndim or k != 0 else D

    def D_from_matrix(self, R):
        """Representation matrix of a proper or improper 3x3 rotation matrix ``R``."""
        return Irreps([(1, self)]).D_from_matrix(R)


class _MulIr(tuple):
    """A block ``mul x ir`` of an ``Irreps``."""

    def __new__(cls, mul, ir=None):
        if ir is None:  # rebuilt from a (mul, ir) sequence, e.g. by Keras' attribute tracking
            mul, ir = mul
        return super().__new__(cls, (int(mul), Irrep(ir)))

    @property
    def mul(self):
        return self[0]

    @property
    def ir(self):
        return self[1]

    @property
    def dim(self):
        return self.mul * self.ir.dim

    def __repr__(self):
        return f"{self.mul}x{self.ir}"

    __str__ = __repr__


def _parse_irreps_string(text):
    stripped = text.strip()
    if stripped == "":
        return []
    blocks = []
    for term in stripped.split("+"):
        compact = re.sub(r"\s+", "", term)
        m = re.match(r"^(?:(\d+)x)?(\d+[eoy])$", compact)
        if m is None:
            raise ValueError(
                f"Cannot parse irreps from {text!r}: the term {term.strip()!r} is not of "
                f"the form [mul 'x'] l parity, such as '16x0e' or '1o'."
            )
        mul = int(m.group(1)) if m.group(1) is not None else 1
        blocks.append(_MulIr(mul, Irrep(m.group(2))))
    return blocks


class Irreps(tuple):
    """A direct sum of irreps with multiplicities, e.g. ``Irreps("16x0e+8x1o")``.

    Args:
        irreps: a string in e3nn's grammar, an ``Irrep``, another ``Irreps``, or a
            list of ``(mul, ir)`` pairs (``ir`` an ``Irrep``, a string or an
            ``(l, p)`` pair) or of irreps; ``None`` or ``""`` is the empty sum.

    Example:
        >>> irreps = Irreps("16x0e + 8x1o")
        >>> str(irreps), irreps.dim, irreps.lmax
        ('16x0e+8x1o', 40, 1)
    """

    def __new__(cls, irreps=None):
        if isinstance(irreps, Irreps):
            return super().__new__(cls, tuple(irreps))
        blocks = []
        if irreps is None:
            pass
        elif isinstance(irreps, Irrep):
            blocks = [_MulIr(1, irreps)]
        elif isinstance(irreps, str):
            blocks = _parse_irreps_string(irreps)
        elif isinstance(irreps, (list, tuple)):
            for item in irreps:
                if isinstance(item, Irrep) or isinstance(item, str):
                    mul, ir = 1, Irrep(item)
                elif isinstance(item, _MulIr):
                    mul, ir = item
                elif isinstance(item, (list, tuple)) and len(item) == 2:
                    mul, ir = item
                    if isinstance(mul, (bool, np.bool_)) or not isinstance(mul, (int, np.integer)):
                        # an (l, p) pair such as (1, -1)
                        raise ValueError(
                            f"Irreps entries must be (mul, ir) pairs with an integer mul. "
                            f"Received: {item!r} in {irreps!r}"
                        )
                    try:
                        ir = Irrep(ir)
                    except ValueError as e:
                        raise ValueError(f"Cannot build irreps from {irreps!r}: {e}") from None
                else:
                    raise ValueError(
                        f"Irreps entries must be irreps or (mul, ir) pairs. "
                        f"Received: {item!r} in {irreps!r}"
                    )
                if mul < 0:
                    raise ValueError(
                        f"Multiplicities must be >= 0. Received: {mul} in {irreps!r}"
                    )
                blocks.append(_MulIr(int(mul), ir))
        else:
            raise ValueError(
                f"Irreps must be built from a string, an Irrep, an Irreps or a list. "
                f"Received: {irreps!r} of type {type(irreps).__name__}"
            )
        return super().__new__(cls, tuple(blocks))

    # -- text -----------------------------------------------------------------
    def __repr__(self):
        return "+".join(str(b) for b in self)

    __str__ = __repr__

    # -- sizes ----------------------------------------------------------------
    @property
    def dim(self):
        """Total dimension ``sum(mul * (2l+1))``."""
        return sum(b.dim for b in self)

    @property
    def num_irreps(self):
        """Total multiplicity ``sum(mul)``."""
        return sum(b.mul for b in self)

    @property
    def lmax(self):
        """Largest degree present (zero multiplicities ignored, as in e3nn)."""
        ls = [b.ir.l for b in self if b.mul > 0]
        if not ls:
            raise ValueError(f"lmax of an empty Irreps (no multiplicity > 0) is undefined. Received: Irreps({str(self)!r})")
        return max(ls)

    @property
    def ls(self):
        """The degree of every irrep, repeated by multiplicity."""
        return [b.ir.l for b in self for _ in range(b.mul)]

    def count(self, ir):
        """Total multiplicity of ``ir``."""
        ir = Irrep(ir)
        return sum(b.mul for b in self if b.ir == ir)

    def __contains__(self, ir):
        try:
            ir = Irrep(ir)
        except (ValueError, TypeError):
            return False
        return any(b.ir == ir for b in self)

    def slices(self):
        """``slice`` of each block in the flat feature dimension."""
        out, start = [], 0
        for b in self:
            out.append(slice(start, start + b.dim))
            start += b.dim
        return out

    # -- algebra --------------------------------------------------------------
    def __add__(self, other):
        return Irreps(tuple(self) + tuple(Irreps(other)))

    def __radd__(self, other):
        return Irreps(other) + self

    def __mul__(self, other):
        if isinstance(other, Irreps):
            raise NotImplementedError(
                "Use a tensor product layer for the product of two Irreps; "
                "Irreps * int repeats the sum."
            )
        return Irreps(tuple(self) * other)

    __rmul__ = __mul__

    def __getitem__(self, i):
        x = super().__getitem__(i)
        if isinstance(i, slice):
            return Irreps(x)
        return x

    def __eq__(self, other):
        try:
            return tuple(self) == tuple(Irreps(other))
        except (ValueError, TypeError):
            return False

    def __ne__(self, other):
        return not self == other

    def __hash__(self):
        return hash(tuple(self))

    def simplify(self):
        """Merge consecutive equal irreps and drop zero multiplicities."""
        out = []
        for mul, ir in self:
            if out and out[-1][1] == ir:
                out[-1] = (out[-1][0] + mul, ir)
            elif mul > 0:
                out.append((mul, ir))
        return Irreps(out)

    def remove_zero_multiplicities(self):
        return Irreps([(mul, ir) for mul, ir in self if mul > 0])

    def sort(self):
        """Sort the blocks by ``(l, p)``, stable.

        Returns:
            A named tuple ``(irreps, p, inv)``: the sorted irreps, ``p[i]`` the new
            position of old block ``i`` and ``inv`` its inverse (``inv[j]`` the old
            position of new block ``j``), as in e3nn.
        """
        Ret = collections.namedtuple("sort", ["irreps", "p", "inv"])
        order = sorted(range(len(self)), key=lambda i: (self[i].ir, i))
        inv = tuple(order)
        p = [0] * len(inv)
        for new, old in enumerate(inv):
            p[old] = new
        return Ret(Irreps([self[i] for i in inv]), tuple(p), inv)

    def regroup(self):
        """``sort().irreps.simplify()``: one block per distinct irrep, sorted."""
        return self.sort().irreps.simplify()

    def filter(self, keep=None, drop=None):
        """Keep (or drop) the blocks whose irrep is in ``keep`` (``drop``)."""
        if keep is not None and drop is not None:
            raise ValueError("Pass either keep or drop, not both.")
        if keep is not None:
            keep = {Irrep(ir) for _, ir in Irreps(keep)} if not callable(keep) else keep
            test = keep if callable(keep) else (lambda b: b.ir in keep)
            return Irreps([b for b in self if test(b)])
        if drop is not None:
            drop = {Irrep(ir) for _, ir in Irreps(drop)} if not callable(drop) else drop
            test = drop if callable(drop) else (lambda b: b.ir in drop)
            return Irreps([b for b in self if not test(b)])
        return self

    @staticmethod
    def spherical_harmonics(lmax, p=-1):
        """``1x0e+1x1o+1x2e+...`` up to ``lmax`` (``p=-1``), or all even for ``p=1``."""
        if isinstance(lmax, bool) or not isinstance(lmax, (int, np.integer)) or lmax < 0:
            raise ValueError(f"lmax must be an int >= 0. Received: lmax={lmax!r}")
        if p not in (1, -1):
            raise ValueError(f"p must be +1 or -1. Received: p={p!r}")
        return Irreps([(1, Irrep(l, p**l)) for l in range(lmax + 1)])

    # -- representation -------------------------------------------------------
    def D_from_angles(self, alpha, beta, gamma, k=0):
        """Block-diagonal representation matrix for Euler angles and ``k`` inversions."""
        from tfequivariant import so3

        alpha, beta, gamma, k = np.broadcast_arrays(
            *(np.asarray(a) for a in (alpha, beta, gamma, k))
        )
        dtype = np.result_type(alpha.dtype, beta.dtype, gamma.dtype, np.float32)
        shape = alpha.shape
        out = np.zeros(shape + (self.dim, self.dim), dtype=dtype)
        cache = {}
        for (mul, ir), s in zip(self, self.slices()):
            if ir.l not in cache:
                cache[ir.l] = so3.wigner_D(ir.l, alpha, beta, gamma)
            D = (float(ir.p) ** k).astype(dtype)[..., None, None] * cache[ir.l]
            for u in range(mul):
                a = s.start + u * ir.dim
                out[..., a : a + ir.dim, a : a + ir.dim] = D
        return out

    def D_from_matrix(self, R):
        """Block-diagonal representation matrix of a proper or improper rotation ``R``.

        ``R`` is a ``[..., 3, 3]`` orthogonal matrix; an improper ``R`` (``det = -1``)
        acts as the inversion times the proper rotation ``-R``, so each block is
        multiplied by its parity. The output keeps ``R``'s float precision.
        """
        from tfequivariant import so3

        R = np.asarray(R)
        if R.shape[-2:] != (3, 3):
            raise ValueError(f"R must have shape [..., 3, 3]. Received shape: {R.shape}")
        d = np.sign(np.linalg.det(R.astype(np.float64)))
        k = (1 - d) / 2
        Rp = d[..., None, None] * R
        alpha, beta, gamma = so3.matrix_to_angles(Rp)
        return self.D_from_angles(alpha, beta, gamma, k).astype(
            np.result_type(R.dtype, np.float32)
        )

    # -- features -------------------------------------------------------------
    def _check_features(self, x, name="x"):
        import keras

        shape = keras.ops.shape(x)
        last = shape[-1] if len(shape) else None
        if last is not None and not isinstance(last, int):
            try:
                last = int(last)
            except TypeError:
                last = None
        if last is not None and last != self.dim:
            raise ValueError(
                f"{name} must have last dimension irreps.dim = {self.dim} for irreps "
                f"{self!s}. Received: {name} with shape {tuple(shape)}"
            )

    def split(self, x):
        """Split features ``[..., dim]`` into blocks ``[..., mul, 2l+1]`` (one per block)."""
        import keras

        self._check_features(x)
        lead = keras.ops.shape(x)[:-1]
        out = []
        for (mul, ir), s in zip(self, self.slices()):
            out.append(keras.ops.reshape(x[..., s], tuple(lead) + (mul, ir.dim)))
        return out

    def merge(self, blocks):
        """Inverse of ``split``: blocks ``[..., mul, 2l+1]`` to features ``[..., dim]``."""
        import keras

        blocks = list(blocks)
        if len(blocks) != len(self):
            raise ValueError(
                f"merge needs one block per irreps block ({len(self)} for {self!s}). "
                f"Received: {len(blocks)} blocks"
            )
        flat = []
        for (mul, ir), b in zip(self, blocks):
            shape = keras.ops.shape(b)
            if tuple(shape[-2:]) != (mul, ir.dim):
                raise ValueError(
                    f"Block for {mul}x{ir} must end in ({mul}, {ir.dim}). "
                    f"Received shape: {tuple(shape)}"
                )
            flat.append(keras.ops.reshape(b, tuple(shape[:-2]) + (mul * ir.dim,)))
        if not flat:
            raise ValueError("merge of an empty Irreps has no batch shape to return.")
        return keras.ops.concatenate(flat, axis=-1) if len(flat) > 1 else flat[0]

