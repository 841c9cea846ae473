"""Quick start: spherical harmonics, Wigner matrices and an equivariance check.

Run: python examples/quickstart.py [--lmax 3]
"""

import argparse

import numpy as np

import tfequivariant as tfe


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lmax", type=int, default=3, help="largest degree of the harmonics")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    irreps_sh = tfe.Irreps.spherical_harmonics(args.lmax)
    rng = np.random.default_rng(args.seed)
    vectors = rng.normal(size=(4, 3))
    Y = tfe.spherical_harmonics(irreps_sh, vectors, normalization="component")
    print(f"irreps of the harmonics: {irreps_sh} (dim {irreps_sh.dim})")
    np.set_printoptions(precision=4, suppress=True, linewidth=120)
    print("Y(x) for the first vector:\n", Y[0])

    R = tfe.rand_matrix(seed=args.seed)
    D = irreps_sh.D_from_matrix(R)
    rotated = tfe.spherical_harmonics(irreps_sh, vectors @ R.T, normalization="component")
    err = np.abs(rotated - Y @ D.T).max()
    print(f"max |Y(R x) - D(R) Y(x)| over {len(vectors)} vectors: {err:.2e}")
    print(f"wigner_3j(1, 1, 1) * sqrt(6) is the Levi-Civita tensor: "
          f"{np.allclose(tfe.wigner_3j(1, 1, 1) * np.sqrt(6), np.array([[[0,0,0],[0,0,1],[0,-1,0]],[[0,0,-1],[0,0,0],[1,0,0]],[[0,1,0],[-1,0,0],[0,0,0]]]))}")
    print(f"RESULT: spherical harmonics up to l={args.lmax} are equivariant to {err:.1e}")


if __name__ == "__main__":
    main()
