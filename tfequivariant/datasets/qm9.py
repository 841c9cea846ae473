"""QM9: 130,831 small organic molecules with DFT properties, as single-graph examples.

QM9 (Ramakrishnan et al. 2014) holds the equilibrium geometries and
B3LYP/6-31G(2df,p) properties of the molecules of GDB-17 with up to nine heavy
atoms (C, N, O, F), hydrogens included up to 29 atoms. The 130,831 molecules
here are the usual cleaned set: the 3,054 molecules that failed the original
geometry consistency check are not in the files (the ``index`` numbers of the
remaining molecules therefore have gaps).

**Source.** The CSV files of the PyPI package ``qm9pack`` 1.0.3 (the ``qm9``
extra: ``pip install "tfequivariant[qm9]"``), read directly:
``qm9pack/data/qm9_part1.csv`` .. ``qm9_part3.csv`` (one row per molecule, in
QM9 order) and ``qm9_polarizability.csv``. The package itself is never
imported (its ``__init__`` imports the deprecated ``pkg_resources``); its data
directory is found with ``importlib.util.find_spec`` or, failing that, the
installed files listed by ``importlib.metadata``. Lists are stored as text
inside the CSV: positions ``"[[x,y,z],...]"`` in Angstrom, elements
``"['C','H',...]"``, Mulliken charges ``"[q1,...]"`` in units of e. Some
numbers are not valid JSON (``0.``, ``-349.``, ``-7.E-6``, ``1.E-6``); the raw
QM9 files also have Mathematica exponents (``6.8*^-6``). :func:`parse_number`
and :func:`parse_numbers` read all of these and reject anything else (empty
fields, ``nan``, ``inf``, stray characters) with a message naming the text.

**Targets** (:data:`TARGETS`, columns of ``targets`` in this order), in the
units of the files; :func:`to_display_units` converts to the units papers
report MAEs in (:data:`DISPLAY_UNITS`):

=================  ===============================  ============  =============
name               quantity                         file unit     display unit
=================  ===============================  ============  =============
``mu``             dipole moment (magnitude)        D             D
``alpha``          isotropic polarizability         bohr^3        bohr^3
``homo``           HOMO energy                      Ha            meV
``lumo``           LUMO energy                      Ha            meV
``gap``            LUMO - HOMO                      Ha            meV
``r2``             electronic spatial extent        bohr^2        bohr^2
``zpve``           zero-point vibrational energy    Ha            meV
``u0``             internal energy at 0 K           Ha            meV
``u``              internal energy at 298.15 K      Ha            meV
``h``              enthalpy at 298.15 K             Ha            meV
``g``              free energy at 298.15 K          Ha            meV
``cv``             heat capacity at 298.15 K        cal/(mol K)   cal/(mol K)
``rot_a``          rotational constant A            GHz           GHz
``rot_b``          rotational constant B            GHz           GHz
``rot_c``          rotational constant C            GHz           GHz
``dipole_vector``  Mulliken dipole vector (``1o``)  D             D
=================  ===============================  ============  =============

1 Ha = 27211.386245988 meV (:data:`HARTREE_TO_MEV`). Names are matched
case-insensitively (``"U0"``, ``"Cv"``, ``"HOMO"`` work). The energies
``u0``, ``u``, ``h``, ``g`` are total energies (no atom reference energies
subtracted).

**Equivariant target.** ``dipole_vector = 4.80320 D/(e A) * sum_i q_i r_i``
from the Mulliken charges ``q_i`` and positions ``r_i``; the charges are first
shifted by their per-molecule mean so that they sum to exactly zero (the file
rounds them to 1e-6 e), which makes the vector independent of the origin. It
rotates like the positions and flips under inversion: irreps ``1x1o``. It is
the point-charge dipole of the Mulliken charges, not the DFT dipole: its norm
correlates with ``mu`` (Pearson r = 0.944 on the first 3000 molecules, 0.941
on all 130,831) but differs from it by 0.55 D on average (median ratio of norm
to ``mu`` 0.83).

``alpha_principal`` holds the eigenvalues of the polarizability tensor of
``qm9_polarizability.csv`` (their mean is ``alpha`` to the files' rounding).
The tensor itself is not kept: it is given in a different frame than the
positions (acetylene's axis is ``x`` in the positions and ``z`` in the
tensor), so only its invariants are usable.

**Loaded data** (:func:`load`), molecules ``m`` and atoms ``a`` (all
molecules' atoms concatenated; molecule ``m`` owns the atoms
``atom_splits[m]:atom_splits[m + 1]``):

====================  =======  ===========  =======================================
key                   dtype    shape        content
====================  =======  ===========  =======================================
``index``             int32    ``[M]``      QM9 number (``dsgdb9nsd_<index>.xyz``)
``num_atoms``         int32    ``[M]``      atoms per molecule, 3 .. 29
``atom_splits``       int64    ``[M + 1]``  row splits of the atom arrays
``atomic_numbers``    uint8    ``[A]``      1, 6, 7, 8, 9 (H, C, N, O, F)
``positions``         float32  ``[A, 3]``   Angstrom
``mulliken_charges``  float32  ``[A]``      e
``targets``           float64  ``[M, 15]``  :data:`TARGETS` except the vector
``dipole_vector``     float64  ``[M, 3]``   D, from the Mulliken charges
``alpha_principal``   float64  ``[M, 3]``   bohr^3, ascending
====================  =======  ===========  =======================================

The first use parses the CSV files (vectorised: 11 to 17 s for all molecules
on a shared 2-core machine, 0.2 s for the first 3000) and caches the arrays in
one uncompressed ``.npz`` (64 MB for all); later loads read the cache in about
0.1 s. ``limit`` reads only the first molecules of the files (QM9 order, so the
smallest molecules: use it for tests, not for a representative sample; for
that, take a prefix of a split of the full data).

**Splits** (:func:`split_indices`): one seeded random permutation, 110,000
training, 10,000 validation and the remaining 10,831 test molecules, each in
random order (a prefix of a split is a random sample of it).

**Graphs** (:func:`make_examples`, :func:`tf_dataset`): one single-graph
dict per molecule in :mod:`tfequivariant.graph`'s convention:

==================  =======  ==========  ==========================================
key                 dtype    shape       content
==================  =======  ==========  ==========================================
``positions``       float32  ``[n, 3]``  Angstrom
``senders``         int32    ``[e]``     pairs closer than ``cutoff`` (default
``receivers``       int32    ``[e]``     5 A), no self-loops, sorted by receiver
``node_features``   float32  ``[n, 5]``  one-hot H, C, N, O, F (``5x0e``)
``graph_targets``   float32  ``[T]``     the requested targets, standardised
                                         if ``shift``/``scale`` are given
==================  =======  ==========  ==========================================

The 5 A default is the cutoff common for QM9 models; it keeps 89% of all
atom pairs (mean in-degree 15.6 against 17.5 fully connected, over all
molecules), and since no two atoms of a molecule are more than 12.1 A
apart, a few message-passing steps reach across any molecule. ``cutoff=None``
gives the fully connected graph (molecules have at most 29 atoms). Either way
the largest in-degree is at most 28 (``MAX_ATOMS - 1``), the ``max_neighbors``
to give convolutions under XLA.

References:
    Ramakrishnan, Dral, Rupp, von Lilienfeld, "Quantum chemistry structures
    and properties of 134 kilo molecules", Scientific Data 1, 140022 (2014).
    Fuchs, Worrall, Fischer, Welling, "SE(3)-Transformers: 3D Roto-Translation
    Equivariant Attention Networks", NeurIPS 2020 (QM9 results, Table 3).
"""

import csv
import hashlib
import importlib.metadata
import importlib.util
import os
import re

import numpy as np

__all__ = [
    "ATOMIC_NUMBERS",
    "DEBYE_PER_E_ANGSTROM",
    "DISPLAY_UNITS",
    "ELEMENTS",
    "FILE_UNITS",
    "HARTREE_TO_MEV",
    "MAX_ATOMS",
    "NODE_FEATURES_IRREPS",
    "NUM_MOLECULES",
    "SPLIT_SIZES",
    "TARGETS",
    "data_dir",
    "load",
    "make_examples",
    "molecule_edges",
    "mulliken_dipoles",
    "parse_number",
    "parse_numbers",
    "read_csv",
    "select",
    "split_indices",
    "standardization",
    "target_irreps",
    "target_values",
    "tf_dataset",
    "to_display_units",
]

#: Element symbols in the order of the one-hot ``node_features`` (and of the
#: stoichiometry column of the files).
ELEMENTS = ("H", "C", "N", "O", "F")
#: Their atomic numbers.
ATOMIC_NUMBERS = (1, 6, 7, 8, 9)
#: Irreps of ``node_features``.
NODE_FEATURES_IRREPS = "5x0e"
#: Molecules in the files.
NUM_MOLECULES = 130831
#: The largest molecule (atoms, hydrogens included).
MAX_ATOMS = 29
#: Molecules per split of the full data (test: the rest).
SPLIT_SIZES = {"train": 110000, "valid": 10000, "test": NUM_MOLECULES - 120000}
#: Debye per e * Angstrom (e * 1e-10 m / (1e-21 C m^2 s^-1 / c)).
DEBYE_PER_E_ANGSTROM = 4.80320
#: meV per Hartree (CODATA 2018).
HARTREE_TO_MEV = 27211.386245988

# name -> (CSV column, file unit, display unit, display / file factor)
_TARGET_TABLE = (
    ("mu", "Dipole_debye", "D", "D", 1.0),
    ("alpha", "Polarizability_bohr3", "bohr^3", "bohr^3", 1.0),
    ("homo", "HOMO_au", "Ha", "meV", HARTREE_TO_MEV),
    ("lumo", "LUMO_au", "Ha", "meV", HARTREE_TO_MEV),
    ("gap", "HOMO_LUMO_gap_au", "Ha", "meV", HARTREE_TO_MEV),
    ("r2", "R2_bohr2", "bohr^2", "bohr^2", 1.0),
    ("zpve", "ZPVE_au", "Ha", "meV", HARTREE_TO_MEV),
    ("u0", "InternalEnergy_0K_au", "Ha", "meV", HARTREE_TO_MEV),
    ("u", "InternalEnergy_298K_au", "Ha", "meV", HARTREE_TO_MEV),
    ("h", "Enthalphy_298K_au", "Ha", "meV", HARTREE_TO_MEV),  # sic: the file's spelling
    ("g", "GibbsFreeEnergy_298K_au", "Ha", "meV", HARTREE_TO_MEV),
    ("cv", "Heatcapacity_Cv_cal_mol_K", "cal/(mol K)", "cal/(mol K)", 1.0),
    ("rot_a", "RotA_GHz", "GHz", "GHz", 1.0),
    ("rot_b", "RotB_GHz", "GHz", "GHz", 1.0),
    ("rot_c", "RotC_GHz", "GHz", "GHz", 1.0),
)
_VECTOR = "dipole_vector"
#: Target names: the 15 scalar columns of ``targets``, then the vector.
TARGETS = tuple(row[0] for row in _TARGET_TABLE) + (_VECTOR,)
#: Unit of each target as stored.
FILE_UNITS = {**{row[0]: row[2] for row in _TARGET_TABLE}, _VECTOR: "D"}
#: Unit :func:`to_display_units` converts to (meV for energies).
DISPLAY_UNITS = {**{row[0]: row[3] for row in _TARGET_TABLE}, _VECTOR: "D"}
_TO_DISPLAY = {**{row[0]: row[4] for row in _TARGET_TABLE}, _VECTOR: 1.0}

_PARTS = ("qm9_part1.csv", "qm9_part2.csv", "qm9_part3.csv")
_POLARIZABILITY = "qm9_polarizability.csv"
_FILES = _PARTS + (_POLARIZABILITY,)
_EXTRA = 'pip install "tfequivariant[qm9]"'
# Bumped whenever the parsed arrays change, so stale caches are not read.
_CACHE_VERSION = 1

_NUMBER = re.compile(r"[+-]?(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?", re.ASCII)
_NUMBER_BYTES = b"0123456789+-.eE, \t\n\r"
_DROP_BRACKETS = str.maketrans("", "", "[]\"'")


# ----------------------------------------------------------------------------
# Numbers
# ----------------------------------------------------------------------------


def parse_number(text):
    """Parses one number as the QM9 files write them.

    Accepts what ``float`` accepts for finite decimal numbers, including a
    trailing point (``"0."``, ``"-349."``), an exponent after a bare point
    (``"-7.E-6"``) and Mathematica's exponent ``*^`` (``"6.8*^-6"``), with
    surrounding whitespace. Everything else is an error: empty text, ``nan``,
    ``inf``, underscores, several numbers.

    Args:
        text: a ``str``.

    Returns:
        A Python ``float``.

    Example:
        >>> [parse_number(s) for s in ["0.", "-7.E-6", "1.5*^-3", " 12 ", "-.5e2"]]
        [0.0, -7e-06, 0.0015, 12.0, -50.0]
    """
    if not isinstance(text, str):
        raise ValueError(f"parse_number: text must be a str. Received: text={text!r}")
    body = text.strip().replace("*^", "e")
    if not _NUMBER.fullmatch(body):
        raise ValueError(
            f"parse_number: not a finite decimal number (forms like 12, -0.5, 0., -7.E-6, "
            f"1.2e3 and 6.8*^-6 are accepted). Received: text={text!r}"
        )
    return float(body)


def _join(strings, where):
    if isinstance(strings, str):
        return strings, [strings]
    items = strings.tolist() if isinstance(strings, np.ndarray) else list(strings)
    try:
        return ",".join(items), items
    except TypeError:
        bad = next(i for i, s in enumerate(items) if not isinstance(s, str))
        raise ValueError(
            f"{where}: strings must be a str or a sequence of str. Received item {bad}: "
            f"{items[bad]!r}"
        ) from None


def parse_numbers(strings):
    """Parses comma-separated numbers, brackets and quotes ignored, vectorised.

    ``"[[0.,1.5],[-7.E-6,2]]"`` gives ``[0, 1.5, -7e-6, 2]``. A sequence of
    such strings gives all their numbers concatenated in order (as if joined
    by commas), which is how the loader reads a whole CSV column at once.
    Every number must satisfy :func:`parse_number`; the first one that does
    not raises a ``ValueError`` naming it, its position and its string.

    Args:
        strings: a ``str`` or a sequence of ``str``.

    Returns:
        A float64 array ``[count]`` (empty strings and ``"[]"`` give no
        numbers).

    Example:
        >>> parse_numbers("[[0.,1.5],[-7.E-6,2]]").tolist()
        [0.0, 1.5, -7e-06, 2.0]
        >>> parse_numbers(["[1,2]", "[]", "3.*^2"]).tolist()
        [1.0, 2.0, 300.0]
        >>> parse_numbers("[1,nan]")
        Traceback (most recent call last):
        ...
        ValueError: parse_numbers: number 1 of string 0 ('nan'): parse_number: not a finite ...
    """
    where = "parse_numbers"
    text, items = _join(strings, where)
    text = text.replace("*^", "e").translate(_DROP_BRACKETS)
    tokens = text.split(",")
    if "" in tokens:
        # Empty strings (e.g. "[]") hold no numbers; anything else empty is an error below.
        tokens = _tokens_per_item(items)
    try:
        ok = not text.encode("ascii").translate(None, _NUMBER_BYTES)
    except UnicodeEncodeError:
        ok = False
    if ok:
        try:
            values = np.array(tokens, dtype=np.float64)
            ok = bool(np.all(np.isfinite(values)))
        except ValueError:
            ok = False
    if ok:
        return values
    _raise_first_bad(items, where)


def _item_tokens(item, exponents=True):
    body = item.translate(_DROP_BRACKETS)
    if exponents:
        body = body.replace("*^", "e")
    return body.split(",") if body.strip() else []


def _tokens_per_item(items):
    return [tok for item in items for tok in _item_tokens(item)]


def _raise_first_bad(items, where):
    for i, item in enumerate(items):
        for j, tok in enumerate(_item_tokens(item, exponents=False)):
            try:
                parse_number(tok)
            except ValueError as e:
                raise ValueError(f"{where}: number {j} of string {i} ({tok!r}): {e}") from None
    raise ValueError(f"{where}: could not parse the numbers. Received: {_short(items)}")


def _is_int(value):
    return isinstance(value, (int, np.integer)) and not isinstance(value, (bool, np.bool_))


def _check_limit(limit, where):
    if limit is not None and (not _is_int(limit) or limit < 1):
        raise ValueError(f"{where}: limit must be None or an int >= 1. Received: limit={limit!r}")
    return None if limit is None else int(limit)


def _short(items):
    text = repr(items)
    return text if len(text) <= 200 else text[:200] + "..."


# ----------------------------------------------------------------------------
# Names and units
# ----------------------------------------------------------------------------


def _target_name(name, where):
    if isinstance(name, str):
        key = name.lower()
        if key in TARGETS:
            return key
    raise ValueError(f"{where}: unknown target. Use one of {list(TARGETS)}. Received: {name!r}")


def _target_names(targets, where):
    if isinstance(targets, str):
        targets = (targets,)
    try:
        names = [_target_name(t, where) for t in targets]
    except TypeError:
        raise ValueError(
            f"{where}: targets must be a name or a sequence of names from {list(TARGETS)}. "
            f"Received: targets={targets!r}"
        ) from None
    if not names:
        raise ValueError(f"{where}: targets must name at least one target. Received: {targets!r}")
    if len(set(names)) != len(names):
        raise ValueError(f"{where}: targets must not repeat. Received: targets={targets!r}")
    return names


def to_display_units(values, target):
    """Converts values (or errors) of ``target`` from file units to :data:`DISPLAY_UNITS`.

    Energies go from Hartree to meV; the other targets keep their units (D,
    bohr^3, bohr^2, cal/(mol K), GHz). The conversion is a pure factor, so it
    applies to values, differences and MAEs alike.

    Args:
        values: a number or array in the file unit of ``target``.
        target: a name from :data:`TARGETS` (any case).

    Returns:
        ``values`` times the factor, as a float or float64 array.

    Example:
        >>> round(to_display_units(0.0013, "HOMO"), 2), DISPLAY_UNITS["homo"]
        (35.37, 'meV')
    """
    factor = _TO_DISPLAY[_target_name(target, "to_display_units")]
    out = np.asarray(values, dtype=np.float64) * factor
    return float(out) if out.ndim == 0 else out


def target_irreps(targets):
    """Irreps of ``graph_targets``: ``1x0e`` per scalar target, ``1x1o`` for the dipole vector.

    Example:
        >>> target_irreps(["homo", "dipole_vector"])
        '1x0e+1x1o'
    """
    names = _target_names(targets, "target_irreps")
    return "+".join("1x1o" if n == _VECTOR else "1x0e" for n in names)


# ----------------------------------------------------------------------------
# Locating and reading the files
# ----------------------------------------------------------------------------


def _has_files(directory):
    return directory is not None and all(os.path.isfile(os.path.join(directory, f)) for f in _FILES)


def _locate_data_dir():
    """qm9pack's data directory without importing qm9pack, or None if not installed."""
    try:
        spec = importlib.util.find_spec("qm9pack")
    except (ImportError, ValueError):
        spec = None
    if spec is not None:
        for location in spec.submodule_search_locations or ():
            candidate = os.path.join(location, "data")
            if _has_files(candidate):
                return candidate
    try:
        files = importlib.metadata.files("qm9pack") or ()
    except importlib.metadata.PackageNotFoundError:
        return None
    for file in files:
        if file.name == _PARTS[0]:
            candidate = os.path.dirname(os.fspath(file.locate()))
            if _has_files(candidate):
                return candidate
    return None


def data_dir(directory=None):
    """The directory holding the QM9 CSV files.

    Args:
        directory: ``None`` to find the files of the installed ``qm9pack``
            package (never imported), or a directory holding
            ``qm9_part1.csv`` .. ``qm9_part3.csv`` and
            ``qm9_polarizability.csv``.

    Returns:
        The directory, a ``str``.

    Raises:
        ImportError: ``directory`` is ``None`` and ``qm9pack`` is not
            installed; the message gives the install command
            (``pip install "tfequivariant[qm9]"``).
        ValueError: ``directory`` lacks one of the files.
    """
    if directory is not None:
        directory = os.fspath(directory)
        missing = [f for f in _FILES if not os.path.isfile(os.path.join(directory, f))]
        if missing:
            raise ValueError(
                f"data_dir: the directory lacks the QM9 file(s) {missing}. "
                f"Received: directory={directory!r}"
            )
        return directory
    found = _locate_data_dir()
    if found is None:
        raise ImportError(
            "QM9 needs the CSV files of the qm9pack package (~104 MB), which is not installed. "
            f'Install it with: {_EXTRA}  (or pip install qm9pack==1.0.3), or pass the '
            "directory holding qm9_part1.csv .. qm9_part3.csv and qm9_polarizability.csv."
        )
    return found


_COLUMNS = (
    "XYZ_file",
    "Index",
    "N_atoms",
    "Stoichiometry",
    "Elements",
    "XYZ_Ang",
    "Mulliken_pop",
) + tuple(row[1] for row in _TARGET_TABLE)
_POL_COLUMNS = ("XYZ_file", "A_xx", "A_xy", "A_yy", "A_xz", "A_yz", "A_zz")


def _read_columns(path, names, limit):
    """The columns ``names`` of a CSV file (lists of str), at most ``limit`` rows."""
    with open(path, newline="") as file:
        reader = csv.reader(file)
        header = next(reader, None)
        if header is None or not set(names) <= set(header):
            missing = sorted(set(names) - set(header or ()))
            raise ValueError(
                f"read_csv: {path} lacks the column(s) {missing}; is it a qm9pack 1.0.3 file? "
                f"Received header: {header}"
            )
        positions = [header.index(n) for n in names]
        columns = [[] for _ in names]
        appends = [c.append for c in columns]
        width = len(header)
        for count, row in enumerate(reader):
            if limit is not None and count >= limit:
                break
            if len(row) != width:
                raise ValueError(
                    f"read_csv: {path} row {count + 2} has {len(row)} fields, the header {width}."
                )
            for append, p in zip(appends, positions):
                append(row[p])
    return dict(zip(names, columns))


def _numbers(strings, path, column, per_item=None):
    """parse_numbers on a column, with the file, row and column in the error."""
    try:
        values = parse_numbers(strings)
    except ValueError as e:
        for row, s in enumerate(strings):
            try:
                parse_numbers(s)
            except ValueError as inner:
                raise ValueError(
                    f"read_csv: {path} row {row + 2}, column {column}: {inner}"
                ) from None
        raise ValueError(f"read_csv: {path}, column {column}: {e}") from None
    if per_item is not None and not _counts_match(strings, per_item, values.size):
        counts = np.array([parse_numbers(s).size for s in strings])
        bad = int(np.flatnonzero(counts != per_item)[0])
        raise ValueError(
            f"read_csv: {path} row {bad + 2}, column {column}: expected {int(per_item[bad])} "
            f"numbers, found {counts[bad]}. Received: {strings[bad][:200]!r}"
        )
    return values


def _counts_match(strings, per_item, total):
    """Whether each string holds ``per_item`` comma-separated items, ``total`` in all."""
    commas = np.fromiter((s.count(",") for s in strings), np.int64, len(strings))
    return total == int(np.sum(per_item)) and np.array_equal(commas + 1, per_item)


def _elements(strings, num_atoms, path):
    """Element lists -> uint8 atomic numbers, checked against the atom counts."""
    lookup = np.zeros(256, np.uint8)
    for symbol, z in zip(ELEMENTS, ATOMIC_NUMBERS):
        lookup[ord(symbol)] = z
    text = ",".join(strings).translate(_DROP_BRACKETS).replace(" ", "")
    raw = np.frombuffer(text.encode("ascii", "replace"), np.uint8)
    total = int(num_atoms.sum())
    # Fast path: single-letter symbols separated by commas.
    if (
        raw.size == 2 * total - 1
        and np.all(raw[1::2] == ord(","))
        and _counts_match(strings, num_atoms, (raw.size + 1) // 2)
    ):
        z = lookup[raw[0::2]]
        if np.all(z > 0):
            return z
    for row, s in enumerate(strings):
        symbols = [t for t in s.translate(_DROP_BRACKETS).replace(" ", "").split(",") if t]
        unknown = [t for t in symbols if t not in ELEMENTS]
        if unknown or len(symbols) != num_atoms[row]:
            raise ValueError(
                f"read_csv: {path} row {row + 2}, column Elements: expected {int(num_atoms[row])} "
                f"symbols from {ELEMENTS}. Received: {s!r}"
            )
    raise ValueError(f"read_csv: {path}, column Elements: could not read the symbols.")


def _split_starts(num_atoms):
    splits = np.zeros(num_atoms.size + 1, np.int64)
    np.cumsum(num_atoms, out=splits[1:])
    return splits


def mulliken_dipoles(positions, charges, atom_splits):
    """Point-charge dipoles ``4.80320 * sum_i (q_i - mean q) r_i`` in Debye, per molecule.

    Args:
        positions: ``[A, 3]`` in Angstrom, the atoms of all molecules.
        charges: ``[A]`` in e.
        atom_splits: int ``[M + 1]``, molecule ``m`` owns atoms
            ``atom_splits[m]:atom_splits[m + 1]`` (each molecule non-empty).

    Returns:
        float64 ``[M, 3]``.

    Example:
        >>> mulliken_dipoles([[0.0, 0, 0], [1, 0, 0]], [-0.5, 0.5], [0, 2]).round(4).tolist()
        [[2.4016, 0.0, 0.0]]
    """
    positions = np.asarray(positions, np.float64)
    charges = np.asarray(charges, np.float64)
    splits = np.asarray(atom_splits, np.int64)
    counts = np.diff(splits)
    if np.any(counts < 1) or splits[0] != 0 or splits[-1] != charges.shape[0]:
        raise ValueError(
            "mulliken_dipoles: atom_splits must start at 0, increase strictly and end at the "
            f"number of atoms ({charges.shape[0]}). Received: atom_splits={splits[:10]}..."
        )
    starts = splits[:-1]
    mean_q = np.add.reduceat(charges, starts) / counts
    centred = charges - np.repeat(mean_q, counts)
    return DEBYE_PER_E_ANGSTROM * np.add.reduceat(centred[:, None] * positions, starts, axis=0)


def read_csv(directory=None, limit=None):
    """Parses the QM9 CSV files (no cache; :func:`load` caches this).

    Args:
        directory: as in :func:`data_dir`.
        limit: ``None`` for all molecules, or an int >= 1: only the first
            ``limit`` rows (QM9 order) are read.

    Returns:
        The dict described in the module docstring.

    Raises:
        ImportError: qm9pack is not installed and no directory is given.
        ValueError: a file is malformed (the message names the file, row
            and column).
    """
    where = "read_csv"
    limit = _check_limit(limit, where)
    directory = data_dir(directory)
    parts = []
    remaining = limit
    for name in _PARTS:
        if remaining is not None and remaining <= 0:
            break
        path = os.path.join(directory, name)
        cols = _read_columns(path, _COLUMNS, remaining)
        if cols["XYZ_file"]:
            parts.append((path, cols))
        if remaining is not None:
            remaining -= len(cols["XYZ_file"])
    if not parts:
        raise ValueError(f"{where}: the files in {directory} hold no molecules.")
    keys = ("index", "num_atoms", "atomic_numbers", "positions", "charges", "targets", "files")
    out = {k: [] for k in keys}
    for path, cols in parts:
        counted = _numbers(cols["N_atoms"], path, "N_atoms")
        num_atoms = counted.astype(np.int64)
        bad = np.flatnonzero((num_atoms != counted) | (num_atoms < 1) | (num_atoms > MAX_ATOMS))
        if bad.size:
            raise ValueError(
                f"{where}: {path} row {bad[0] + 2}, column N_atoms: expected an integer in "
                f"[1, {MAX_ATOMS}]. Received: {cols['N_atoms'][bad[0]]!r}"
            )
        z = _elements(cols["Elements"], num_atoms, path)
        stoich = _numbers(cols["Stoichiometry"], path, "Stoichiometry", np.full(num_atoms.size, 5))
        stoich = stoich.reshape(-1, 5)
        molecule = np.repeat(np.arange(num_atoms.size), num_atoms)
        kind = np.searchsorted(np.array(ATOMIC_NUMBERS), z)
        counts = np.bincount(molecule * 5 + kind, minlength=5 * num_atoms.size).reshape(-1, 5)
        if not np.array_equal(counts, stoich):
            bad = int(np.flatnonzero(np.any(counts != stoich, axis=1))[0])
            raise ValueError(
                f"{where}: {path} row {bad + 2}: the elements {counts[bad].tolist()} (H, C, N, O, "
                f"F) disagree with the stoichiometry {stoich[bad].astype(int).tolist()}."
            )
        positions = _numbers(cols["XYZ_Ang"], path, "XYZ_Ang", 3 * num_atoms).reshape(-1, 3)
        charges = _numbers(cols["Mulliken_pop"], path, "Mulliken_pop", num_atoms)
        targets = np.stack([_numbers(cols[row[1]], path, row[1]) for row in _TARGET_TABLE], axis=1)
        out["index"].append(_numbers(cols["Index"], path, "Index").astype(np.int64))
        out["num_atoms"].append(num_atoms)
        out["atomic_numbers"].append(z)
        out["positions"].append(positions)
        out["charges"].append(charges)
        out["targets"].append(targets)
        out["files"].extend(cols["XYZ_file"])
    num_atoms = np.concatenate(out["num_atoms"])
    count = num_atoms.size
    pol_path = os.path.join(directory, _POLARIZABILITY)
    pol = _read_columns(pol_path, _POL_COLUMNS, count)
    if pol["XYZ_file"] != out["files"]:
        raise ValueError(
            f"{where}: the rows of {pol_path} are not the molecules of the part files, in order."
        )
    a = np.stack([_numbers(pol[c], pol_path, c) for c in _POL_COLUMNS[1:]], axis=1)
    tensor = a[:, [0, 1, 3, 1, 2, 4, 3, 4, 5]].reshape(-1, 3, 3)
    positions = np.concatenate(out["positions"])
    charges = np.concatenate(out["charges"])
    splits = _split_starts(num_atoms)
    return {
        "index": np.concatenate(out["index"]).astype(np.int32),
        "num_atoms": num_atoms.astype(np.int32),
        "atom_splits": splits,
        "atomic_numbers": np.concatenate(out["atomic_numbers"]),
        "positions": positions.astype(np.float32),
        "mulliken_charges": charges.astype(np.float32),
        "targets": np.concatenate(out["targets"]),
        "dipole_vector": mulliken_dipoles(positions, charges, splits),
        "alpha_principal": np.linalg.eigvalsh(tensor),
    }


# ----------------------------------------------------------------------------
# Cache, subsets, splits
# ----------------------------------------------------------------------------


def _source_tag(directory, located):
    """qm9pack-<version> for the package's files, else a hash of the directory and sizes."""
    if located:
        try:
            return "qm9pack-" + importlib.metadata.version("qm9pack")
        except importlib.metadata.PackageNotFoundError:
            pass
    sizes = [os.path.getsize(os.path.join(directory, f)) for f in _FILES]
    key = f"{os.path.abspath(directory)}|{sizes}".encode()
    return "dir-" + hashlib.sha1(key).hexdigest()[:10]


def _read_npz(path):
    with np.load(path) as cached:
        return {key: cached[key] for key in cached.files}


def load(limit=None, cache_dir=None, directory=None):
    """QM9 as arrays (module docstring); parses the CSV files once and caches them.

    Args:
        limit: ``None`` for all 130,831 molecules, or an int >= 1 for the
            first ``limit`` molecules of the files (QM9 order: small molecules
            first). With the full cache present, a limited load slices it;
            otherwise only those rows are parsed (and cached on their own).
        cache_dir: the directory of the cache files; default
            ``$TFEQUIVARIANT_CACHE/qm9`` if that variable is set, else
            ``~/.cache/tfequivariant/qm9``.
        directory: as in :func:`data_dir` (``None``: the installed qm9pack).

    Returns:
        A dict of NumPy arrays (keys in the module docstring).

    Raises:
        ImportError: qm9pack is not installed (the message says
            ``pip install "tfequivariant[qm9]"``) and no directory is given.

    Example:
        >>> import tempfile
        >>> with tempfile.TemporaryDirectory() as d:  # doctest: +SKIP
        ...     data = load(limit=100, cache_dir=d)
        >>> data["targets"].shape  # doctest: +SKIP
        (100, 15)
    """
    where = "load"
    limit = _check_limit(limit, where)
    located = directory is None
    directory = data_dir(directory)
    # Here, not at the top: this module imports without TensorFlow (the package's __init__ needs it).
    from tfequivariant.datasets import _cache

    folder = _cache.cache_dir(cache_dir, "qm9")
    tag = _source_tag(directory, located)
    full_path = os.path.join(folder, f"qm9_all_{tag}_v{_CACHE_VERSION}.npz")
    if limit is not None and limit >= NUM_MOLECULES:
        limit = None
    if os.path.exists(full_path):
        data = _read_npz(full_path)
        return data if limit is None else select(data, np.arange(min(limit, data["index"].size)))
    if limit is None:
        data = read_csv(directory)
        _cache.write_npz(full_path, data)
        return data
    path = os.path.join(folder, f"qm9_first{int(limit)}_{tag}_v{_CACHE_VERSION}.npz")
    if os.path.exists(path):
        return _read_npz(path)
    data = read_csv(directory, limit=int(limit))
    _cache.write_npz(path, data)
    return data


def _check_data(data, where):
    keys = ("num_atoms", "atom_splits", "atomic_numbers", "positions", "targets", "dipole_vector")
    if not isinstance(data, dict) or not set(keys) <= set(data):
        got = sorted(data) if isinstance(data, dict) else type(data).__name__
        raise ValueError(
            f"{where}: data must be the dict returned by load or read_csv. Received: {got}"
        )
    return int(data["num_atoms"].shape[0])


def _indices(indices, count, where):
    if indices is None:
        return np.arange(count)
    idx = np.asarray(indices)
    if idx.ndim != 1 or (idx.size and idx.dtype.kind not in "iu"):
        raise ValueError(
            f"{where}: indices must be a 1-D int array. Received: indices of shape "
            f"{idx.shape}, dtype {idx.dtype}"
        )
    idx = idx.astype(np.int64)
    if idx.size and (idx.min() < 0 or idx.max() >= count):
        raise ValueError(
            f"{where}: indices must lie in [0, {count}) (the molecules of data). "
            f"Received: min {idx.min()}, max {idx.max()}"
        )
    return idx


def select(data, indices):
    """The molecules ``indices`` of ``data`` (the dict of :func:`load`), in that order.

    Example:
        >>> data = {"index": np.array([1, 2], "int32"), "num_atoms": np.array([1, 2], "int32"),
        ...         "atom_splits": np.array([0, 1, 3]),
        ...         "atomic_numbers": np.array([6, 1, 1], "uint8"),
        ...         "positions": np.arange(9, dtype="float32").reshape(3, 3),
        ...         "mulliken_charges": np.zeros(3, "float32"), "targets": np.zeros((2, 15)),
        ...         "dipole_vector": np.zeros((2, 3)), "alpha_principal": np.zeros((2, 3))}
        >>> sub = select(data, [1])
        >>> sub["atomic_numbers"].tolist(), sub["atom_splits"].tolist(), sub["index"].tolist()
        ([1, 1], [0, 2], [2])
    """
    count = _check_data(data, "select")
    idx = _indices(indices, count, "select")
    splits = data["atom_splits"]
    num_atoms = data["num_atoms"][idx]
    new_splits = _split_starts(num_atoms.astype(np.int64))
    atoms = np.repeat(splits[idx] - new_splits[:-1], num_atoms) + np.arange(new_splits[-1])
    out = {}
    for key, value in data.items():
        if key == "atom_splits":
            out[key] = new_splits
        elif key in ("atomic_numbers", "positions", "mulliken_charges"):
            out[key] = value[atoms]
        else:
            out[key] = value[idx]
    return out


def split_indices(num_molecules=NUM_MOLECULES, seed=0):
    """Random train / valid / test molecule indices (disjoint, covering all).

    For the full data: 110,000 / 10,000 / 10,831 (:data:`SPLIT_SIZES`); for
    ``num_molecules`` molecules the same proportions (``floor``), test taking
    the rest. One permutation by ``numpy.random.default_rng(seed)``; each
    split keeps the permutation's order, so its prefixes are random samples.

    Args:
        num_molecules: an int >= 3, normally ``len(data["num_atoms"])``.
        seed: an int.

    Returns:
        A dict ``{"train", "valid", "test"}`` of int64 index arrays.

    Example:
        >>> s = split_indices()
        >>> {k: len(v) for k, v in s.items()}
        {'train': 110000, 'valid': 10000, 'test': 10831}
    """
    where = "split_indices"
    if not _is_int(num_molecules) or num_molecules < 3:
        raise ValueError(
            f"{where}: num_molecules must be an int >= 3. Received: num_molecules={num_molecules!r}"
        )
    if not _is_int(seed):
        raise ValueError(f"{where}: seed must be an int. Received: seed={seed!r}")
    n = int(num_molecules)
    train = max(1, n * SPLIT_SIZES["train"] // NUM_MOLECULES)
    valid = max(1, n * SPLIT_SIZES["valid"] // NUM_MOLECULES)
    perm = np.random.default_rng(int(seed)).permutation(n)
    return {
        "train": perm[:train],
        "valid": perm[train : train + valid],
        "test": perm[train + valid :],
    }


def target_values(data, targets, indices=None):
    """Targets of molecules in file units: float64 ``[k, T]``, the vector as 3 columns.

    Example:
        >>> data = {"num_atoms": np.array([3]), "atom_splits": np.array([0, 3]),
        ...         "atomic_numbers": np.zeros(3), "positions": np.zeros((3, 3)),
        ...         "targets": np.arange(15.0)[None], "dipole_vector": np.array([[1.0, 2, 3]])}
        >>> target_values(data, ["gap", "dipole_vector"]).tolist()
        [[4.0, 1.0, 2.0, 3.0]]
    """
    where = "target_values"
    count = _check_data(data, where)
    names = _target_names(targets, where)
    idx = _indices(indices, count, where)
    columns = []
    for name in names:
        if name == _VECTOR:
            columns.append(np.asarray(data["dipole_vector"], np.float64)[idx])
        else:
            column = np.asarray(data["targets"], np.float64)[idx, TARGETS.index(name)]
            columns.append(column[:, None])
    return np.concatenate(columns, axis=1)


def standardization(data, targets, indices=None):
    """Per-column ``(shift, scale)`` for :func:`make_examples`, from (training) molecules.

    Scalars: the mean and standard deviation. The dipole vector: shift 0 (a
    shift would break equivariance) and the root mean square of its
    components, the same for all three.

    Returns:
        ``(shift, scale)``, float64 ``[T]`` each (``T`` columns as in
        :func:`target_values`).
    """
    values = target_values(data, targets, indices)
    shift, scale = [], []
    for name in _target_names(targets, "standardization"):
        width = 3 if name == _VECTOR else 1
        column, values = values[:, :width], values[:, width:]
        if name == _VECTOR:
            shift += [0.0] * 3
            scale += [float(np.sqrt(np.mean(column**2)))] * 3
        else:
            shift.append(float(column.mean()))
            scale.append(float(column.std()))
    scale = np.where(np.array(scale) > 0, scale, 1.0)
    return np.array(shift), scale


# ----------------------------------------------------------------------------
# Graphs
# ----------------------------------------------------------------------------


def molecule_edges(positions, cutoff=5.0):
    """All pairs closer than ``cutoff`` (or all pairs), by dense distances.

    The same edges, in the same order, as
    ``tfequivariant.graph.radius_graph_numpy(positions, cutoff)`` (no
    self-loops, sorted by receiver then sender), without building a tree:
    for molecules of at most 29 atoms the dense distance matrix is faster.

    Args:
        positions: ``[n, 3]``.
        cutoff: a positive number, or ``None`` for the fully connected graph.

    Returns:
        ``(senders, receivers)``, int32 ``[e]``.

    Example:
        >>> s, r = molecule_edges([[0.0, 0, 0], [1, 0, 0], [7, 0, 0]], cutoff=5.0)
        >>> s.tolist(), r.tolist()
        ([1, 0], [0, 1])
    """
    positions = np.asarray(positions, np.float64)
    if positions.ndim != 2 or positions.shape[1] != 3:
        raise ValueError(
            f"molecule_edges: positions must be [n, 3]. Received shape {positions.shape}"
        )
    n = positions.shape[0]
    mask = ~np.eye(n, dtype=bool)
    if cutoff is not None:
        bad = isinstance(cutoff, bool) or not isinstance(cutoff, (int, float, np.number))
        if bad or not (np.isfinite(cutoff) and cutoff > 0):
            raise ValueError(
                "molecule_edges: cutoff must be None or a positive number. "
                f"Received: cutoff={cutoff!r}"
            )
        diff = positions[:, None, :] - positions[None, :, :]
        mask &= np.einsum("ijk,ijk->ij", diff, diff) < float(cutoff) ** 2
    receivers, senders = np.nonzero(mask)
    return senders.astype(np.int32), receivers.astype(np.int32)


def make_examples(data, indices=None, targets=("homo",), cutoff=5.0, shift=None, scale=None):
    """Single-graph examples of molecules (keys in the module docstring).

    Args:
        data: the dict of :func:`load`.
        indices: molecule indices (e.g. a prefix of a split), default all.
        targets: target names (:data:`TARGETS`, any case), concatenated into
            ``graph_targets`` (the vector as 3 columns, irreps
            :func:`target_irreps`).
        cutoff: edge cutoff in Angstrom, or ``None`` for fully connected.
        shift, scale: optional per-column arrays (from
            :func:`standardization`): ``graph_targets = (y - shift) / scale``,
            computed in float64, then stored as float32.

    Returns:
        A list of dicts of NumPy arrays, one per index, ready for
        ``tfequivariant.graph.merge_graphs`` or :func:`tf_dataset`.

    Example:
        >>> data = {"num_atoms": np.array([2]), "atom_splits": np.array([0, 2]),
        ...         "atomic_numbers": np.array([8, 1], "uint8"),
        ...         "positions": np.array([[0, 0, 0], [0.96, 0, 0]], "float32"),
        ...         "targets": np.zeros((1, 15)), "dipole_vector": np.zeros((1, 3))}
        >>> ex = make_examples(data, targets=["homo", "dipole_vector"])[0]
        >>> ex["node_features"].tolist(), ex["senders"].tolist(), ex["graph_targets"].shape
        ([[0.0, 0.0, 0.0, 1.0, 0.0], [1.0, 0.0, 0.0, 0.0, 0.0]], [1, 0], (4,))
    """
    where = "make_examples"
    count = _check_data(data, where)
    idx = _indices(indices, count, where)
    values = target_values(data, targets, idx)
    if shift is not None:
        values = values - np.asarray(shift, np.float64)
    if scale is not None:
        values = values / np.asarray(scale, np.float64)
    lookup = np.full(256, -1, np.int64)
    lookup[list(ATOMIC_NUMBERS)] = np.arange(len(ATOMIC_NUMBERS))
    kinds = lookup[np.asarray(data["atomic_numbers"], np.int64)]
    if np.any(kinds < 0):
        raise ValueError(f"{where}: data holds atomic numbers other than {ATOMIC_NUMBERS}.")
    eye = np.eye(len(ELEMENTS), dtype=np.float32)
    splits = data["atom_splits"]
    positions = np.asarray(data["positions"], np.float32)
    examples = []
    for k, m in enumerate(idx):
        atoms = slice(int(splits[m]), int(splits[m + 1]))
        pos = positions[atoms]
        kind = kinds[atoms]
        senders, receivers = molecule_edges(pos, cutoff)
        examples.append(
            {
                "positions": pos,
                "senders": senders,
                "receivers": receivers,
                "node_features": eye[kind],
                "graph_targets": values[k].astype(np.float32),
            }
        )
    return examples


def tf_dataset(examples):
    """A ``tf.data.Dataset`` of the single-graph examples, for ``graph.batch_graphs``.

    Built with ``from_tensor_slices`` on ragged tensors (no Python generator),
    so it shuffles, batches and prefetches at tf.data speed. Elements are
    dicts of dense tensors (``positions [n, 3]``, ``senders [e]``, ...).

    Args:
        examples: a non-empty list from :func:`make_examples` (all with the
            same keys).

    Returns:
        A ``tf.data.Dataset``.

    Example:
        >>> from tfequivariant import graph
        >>> ex = {"positions": np.zeros((2, 3), "float32"), "senders": np.array([1, 0], "int32"),
        ...       "receivers": np.array([0, 1], "int32"),
        ...       "node_features": np.eye(5, dtype="float32")[:2],
        ...       "graph_targets": np.zeros(1, "float32")}
        >>> batch = next(iter(graph.batch_graphs(tf_dataset([ex, ex]), batch_size=2)))
        >>> batch["senders"].numpy().tolist(), tuple(batch["graph_targets"].shape)
        ([1, 0, 3, 2], (2, 1))
    """
    import tensorflow as tf  # only the tf.data helper needs TensorFlow

    where = "tf_dataset"
    if not isinstance(examples, (list, tuple)) or not examples:
        raise ValueError(
            f"{where}: examples must be a non-empty list from make_examples. "
            f"Received: {_short(examples)}"
        )
    keys = list(examples[0])
    columns = {}
    for key in keys:
        arrays = [np.asarray(e[key]) for e in examples]
        if key.startswith("graph_"):
            columns[key] = np.stack(arrays)
        else:
            lengths = np.array([a.shape[0] for a in arrays], np.int64)
            columns[key] = tf.RaggedTensor.from_row_lengths(np.concatenate(arrays), lengths)
    return tf.data.Dataset.from_tensor_slices(columns)
