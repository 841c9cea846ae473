"""The ``Gate`` layer: scalars through activations, higher irreps gated by scalars."""

import keras
import numpy as np

from tfequivariant.irreps import Irrep, Irreps
from tfequivariant.layers._activations import activation_parity, get_activation, serialize_activation
from tfequivariant.layers.self_interaction import parse_irreps

__all__ = ["Gate"]


def _activations(acts, irreps, name):
    if not isinstance(acts, (list, tuple)):
        acts = [acts] * len(irreps)
    if len(acts) != len(irreps):
        raise ValueError(
            f"{name} needs one activation per block of its irreps ({len(irreps)} for {irreps}). "
            f"Received: {name}={acts!r}"
        )
    return [get_activation(a, name) for a in acts]


def _out_irreps(irreps, acts, name):
    out = []
    for (mul, ir), act in zip(irreps, acts):
        if ir.l != 0:
            raise ValueError(f"{name} must contain scalars only (l = 0). Received: {irreps}")
        p = ir.p
        if act is not None and p == -1:
            parity = activation_parity(act)
            if parity == 0:
                raise ValueError(
                    f"An activation applied to odd scalars (0o) in {name} must be even or odd, "
                    f"or parity is lost. Received: {serialize_activation(act)!r} for {mul}x{ir}"
                )
            p = parity
        out.append((mul, Irrep(0, p)))
    return Irreps(out)


@keras.saving.register_keras_serializable(package="tfequivariant")
class Gate(keras.layers.Layer):
    """Gate activation (e3nn's ``nn.Gate``; Weiler et al. 2018).

    The input holds three parts: ``scalars``, passed through ``act_scalars``;
    ``gates``, passed through ``act_gates``; and ``gated`` irreps, each channel
    multiplied by one activated gate. Output: activated scalars followed by the
    gated irreps, ``irreps_scalars' + irreps_gated'`` (an odd activation keeps a
    ``0o`` odd, an even one makes it ``0e``; a gate of parity -1 flips the gated
    irrep's parity), as in e3nn.

    The input layout is e3nn's: ``irreps_in = (irreps_scalars + irreps_gates +
    irreps_gated).sort().irreps.simplify()``, i.e. the three parts sorted together.

    Args:
        irreps_scalars: scalar irreps passed through ``act_scalars``.
        act_scalars: one activation (name or callable) per block, or one for all.
        irreps_gates: scalar irreps, ``num_irreps`` equal to ``irreps_gated``'s.
        act_gates: one activation per block, or one for all.
        irreps_gated: the irreps multiplied by the gates.
        **kwargs: base ``Layer`` arguments.

    Call arguments:
        features: ``[..., irreps_in.dim]`` in the sorted layout above.

    Returns:
        ``[..., irreps_out.dim]``.

    Example:
        >>> gate = Gate("4x0e", "silu", "2x0e", "sigmoid", "2x1o")
        >>> str(gate.irreps_in), str(gate.irreps_out)
        ('6x0e+2x1o', '4x0e+2x1o')

    References:
        Weiler et al., "3D steerable CNNs", NeurIPS 2018.
    """

    def __init__(self, irreps_scalars, act_scalars, irreps_gates, act_gates, irreps_gated, **kwargs):
        super().__init__(**kwargs)
        self.irreps_scalars = parse_irreps(irreps_scalars, "irreps_scalars")
        self.irreps_gates = parse_irreps(irreps_gates, "irreps_gates")
        self.irreps_gated = parse_irreps(irreps_gated, "irreps_gated")
        if any(ir.l != 0 for _, ir in self.irreps_gates):
            raise ValueError(f"irreps_gates must be scalars (l = 0). Received: {self.irreps_gates}")
        if self.irreps_gates.num_irreps != self.irreps_gated.num_irreps:
            raise ValueError(
                "There must be one gate per gated channel: irreps_gates.num_irreps "
                f"({self.irreps_gates.num_irreps}) != irreps_gated.num_irreps "
                f"({self.irreps_gated.num_irreps}). Received: irreps_gates={self.irreps_gates}, "
                f"irreps_gated={self.irreps_gated}"
            )
        self.act_scalars = _activations(act_scalars, self.irreps_scalars, "act_scalars")
        self.act_gates = _activations(act_gates, self.irreps_gates, "act_gates")
        scalars_out = _out_irreps(self.irreps_scalars, self.act_scalars, "irreps_scalars")
        gates_out = _out_irreps(self.irreps_gates, self.act_gates, "irreps_gates")
        gate_parities = [ir.p for mul, ir in gates_out for _ in range(mul)]
        gated_out, k = [], 0
        for mul, ir in self.irreps_gated:
            ps = set(gate_parities[k : k + mul])
            k += mul
            if len(ps) > 1:
                raise ValueError(
                    f"The gates of the {mul}x{ir} block have mixed parities {sorted(ps)}; "
                    "order irreps_gates so that each gated block gets gates of one parity."
                )
            p = ps.pop() if ps else 1
            gated_out.append((mul, Irrep(ir.l, ir.p * p)))
        self.irreps_out = scalars_out + Irreps(gated_out)
        cat = self.irreps_scalars + self.irreps_gates + self.irreps_gated
        sorted_ = cat.sort()
        self.irreps_in = sorted_.irreps.simplify()
        # Flat index map from the sorted input layout back to the concatenated order.
        starts_sorted, pos = [], 0
        for mul, ir in sorted_.irreps:
            starts_sorted.append(pos)
            pos += mul * ir.dim
        index = []
        for old, (mul, ir) in enumerate(cat):
            start = starts_sorted[sorted_.p[old]]
            index.extend(range(start, start + mul * ir.dim))
        self._index = np.asarray(index, dtype=np.int32)
        self._identity = bool(np.all(self._index == np.arange(len(index))))
        self._n_scalars = self.irreps_scalars.dim
        self._n_gates = self.irreps_gates.dim

    def build(self, input_shape):
        if input_shape[-1] is not None and input_shape[-1] != self.irreps_in.dim:
            raise ValueError(
                f"features must have last dimension irreps_in.dim = {self.irreps_in.dim} "
                f"(sorted layout {self.irreps_in}). Received shape: {tuple(input_shape)}"
            )

    def call(self, features):
        ops = keras.ops
        x = ops.convert_to_tensor(features, dtype=self.compute_dtype)
        if not self._identity:
            x = ops.take(x, ops.convert_to_tensor(self._index), axis=-1)
        lead = ops.shape(x)[:-1]
        scalars = x[..., : self._n_scalars]
        gates = x[..., self._n_scalars : self._n_scalars + self._n_gates]
        gated = x[..., self._n_scalars + self._n_gates :]
        out = []
        for (mul, ir), s, act in zip(self.irreps_scalars, self.irreps_scalars.slices(), self.act_scalars):
            if mul:
                out.append(act(scalars[..., s]) if act is not None else scalars[..., s])
        gate_values = []
        for (mul, ir), s, act in zip(self.irreps_gates, self.irreps_gates.slices(), self.act_gates):
            if mul:
                gate_values.append(act(gates[..., s]) if act is not None else gates[..., s])
        if gate_values:
            g_all = ops.concatenate(gate_values, axis=-1) if len(gate_values) > 1 else gate_values[0]
            k = 0
            for (mul, ir), block in zip(self.irreps_gated, self.irreps_gated.split(gated)):
                if mul == 0:
                    continue
                g = g_all[..., k : k + mul, None]
                k += mul
                out.append(ops.reshape(block * g, tuple(lead) + (mul * ir.dim,)))
        if not out:
            return ops.zeros(tuple(lead) + (0,), dtype=self.compute_dtype)
        return ops.concatenate(out, axis=-1) if len(out) > 1 else out[0]

    def compute_output_shape(self, input_shape):
        return tuple(input_shape[:-1]) + (self.irreps_out.dim,)

    def get_config(self):
        return {
            **super().get_config(),
            "irreps_scalars": str(self.irreps_scalars),
            "act_scalars": [serialize_activation(a) for a in self.act_scalars],
            "irreps_gates": str(self.irreps_gates),
            "act_gates": [serialize_activation(a) for a in self.act_gates],
            "irreps_gated": str(self.irreps_gated),
        }
