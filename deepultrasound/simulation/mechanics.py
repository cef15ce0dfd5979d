"""Quasi-static compression of a phantom: 2D plane-strain linear elasticity with scikit-fem.

The tissue is nearly incompressible (Poisson ratio 0.495 by default). Quadratic triangles
(``ElementTriP2``) avoid the volumetric locking that linear triangles show at this ratio.

Frame of reference and boundary conditions (the probe's frame, which is the image frame):

* probe surface (top, depth 0): axial displacement 0. ``contact="slip"`` leaves it free laterally
  (frictionless probe; the lateral displacement of the point under the probe's centre is fixed to 0 to
  remove the rigid lateral motion), ``contact="bonded"`` fixes it laterally too (no slip).
* bottom (depth ``D``): axial displacement ``-d`` (the tissue moves up towards the probe by the applied
  compression ``d``), free laterally: the applied axial strain is ``-d / D``.
* sides: traction free.

Displacement is positive downwards (axial) and to the right (lateral); strain in compression is
negative. The problem is linear in ``d``: :func:`solve_compression` solves it once for ``d = 1 mm`` and
every frame scales that solution (valid because each frame's loading is a multiple of the same
boundary pattern; a nonlinear material would need one solve per frame).

Analytic check (homogeneous block, slip contact): with ``sigma_xx = 0`` and ``eps_yy = 0``
(plane strain), ``sigma_xx = lam (eps_xx + eps_zz) + 2 mu eps_xx = 0`` gives
``eps_xx = -lam / (lam + 2 mu) eps_zz = -nu / (1 - nu) eps_zz`` (0.980 |eps_zz| for nu = 0.495).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np
import skfem
from scipy.sparse import coo_matrix, csr_matrix
from scipy.sparse.linalg import factorized
from skfem.helpers import ddot, sym_grad, trace
from skfem.models.elasticity import lame_parameters

from deepultrasound.errors import InputError
from deepultrasound.simulation.phantom import Phantom

Contact = Literal["slip", "bonded"]


@skfem.BilinearForm
def _plane_strain_stiffness(u, v, w):
    lam, mu = lame_parameters(w["young"], w["poisson"])
    eu, ev = sym_grad(u), sym_grad(v)
    return lam * trace(eu) * trace(ev) + 2.0 * mu * ddot(eu, ev)


@dataclass
class CompressionSolution:
    """Displacement field (mm) for 1 mm of applied compression over the domain
    ``x in [x0, x1]``, ``z in [0, depth]`` mm (plane strain).

    ``dofs`` holds the P2 coefficients; :meth:`displacement_at` evaluates the exact FE field.
    """

    basis: skfem.CellBasis
    dofs: np.ndarray
    depth_mm: float
    mesh_shape: tuple[int, int]

    @property
    def applied_strain_per_mm(self) -> float:
        """Applied axial strain (unitless, negative) per mm of compression: ``-1 / depth``."""
        return -1.0 / self.depth_mm

    def probe_matrix(self, x_mm: np.ndarray, z_mm: np.ndarray) -> csr_matrix:
        """Sparse ``(2 * n, ndofs)`` operator: rows ``[lateral of each point, axial of each point]``.

        Build it once for a fixed set of points and reuse it (the FE solution is linear in ``d``)."""
        pts = np.stack([np.ravel(x_mm), np.ravel(z_mm)]).astype(float)
        x0, x1 = self.basis.mesh.p[0].min(), self.basis.mesh.p[0].max()
        if pts.size and (
            pts[0].min() < x0 - 1e-9
            or pts[0].max() > x1 + 1e-9
            or pts[1].min() < -1e-9
            or pts[1].max() > self.depth_mm + 1e-9
        ):
            raise InputError(
                f"points must lie in the mechanical domain x in [{x0:.3f}, {x1:.3f}] mm, "
                f"z in [0, {self.depth_mm:.3f}] mm"
            )
        cells = self._find_cells(pts)
        local = self.basis.mapping.invF(pts[:, :, None], tind=cells)
        phis = np.stack(
            [
                np.asarray(self.basis.elem.gbasis(self.basis.mapping, local, k, tind=cells)[0])[:, :, 0]
                for k in range(self.basis.Nbfun)
            ]
        )  # (Nbfun, 2 components, n)
        n = pts.shape[1]
        rows = np.broadcast_to(np.arange(2 * n).reshape(2, n), phis.shape)
        cols = np.broadcast_to(self.basis.element_dofs[:, None, cells], phis.shape)
        return csr_matrix(coo_matrix((phis.ravel(), (rows.ravel(), cols.ravel())), shape=(2 * n, self.basis.N)))

    def _find_cells(self, pts: np.ndarray) -> np.ndarray:
        # scikit-fem's generic element finder tests every element per point; the tensor mesh allows O(1).
        mesh = self.basis.mesh
        nz, nx = self.mesh_shape
        x0, x1 = mesh.p[0].min(), mesh.p[0].max()
        col = np.clip(((pts[0] - x0) / (x1 - x0) * nx).astype(int), 0, nx - 1)
        row = np.clip((pts[1] / self.depth_mm * nz).astype(int), 0, nz - 1)
        centroids = mesh.p[:, mesh.t].mean(axis=1)
        tcol = np.clip(((centroids[0] - x0) / (x1 - x0) * nx).astype(int), 0, nx - 1)
        trow = np.clip((centroids[1] / self.depth_mm * nz).astype(int), 0, nz - 1)
        order = np.lexsort((np.arange(mesh.t.shape[1]), tcol, trow))
        pair = order.reshape(nz, nx, 2)[row, col]  # the two triangles of each point's cell
        first = pair[:, 0]
        local = self.basis.mapping.invF(pts[:, :, None], tind=first)[:, :, 0]
        inside = (local[0] >= -1e-9) & (local[1] >= -1e-9) & (local.sum(axis=0) <= 1 + 1e-9)
        return np.where(inside, first, pair[:, 1])

    def displacement_at(self, x_mm: np.ndarray, z_mm: np.ndarray) -> np.ndarray:
        """``(2, *shape)`` displacement in mm (channel 0 lateral, 1 axial) per mm of compression."""
        shape = np.broadcast(x_mm, z_mm).shape
        x_mm, z_mm = np.broadcast_arrays(x_mm, z_mm)
        values = self.probe_matrix(x_mm, z_mm) @ self.dofs
        return values.reshape(2, *shape)


def solve_compression(
    phantom: Phantom,
    x_range_mm: tuple[float, float],
    depth_mm: float,
    mesh_shape: tuple[int, int] = (80, 64),
    poisson: float = 0.495,
    contact: Contact = "slip",
) -> CompressionSolution:
    """Solve the compression problem for 1 mm of probe displacement.

    Args:
        phantom: material map; Young's modulus is sampled at every quadrature point (relative units:
            only ratios matter, displacements are independent of the absolute modulus).
        x_range_mm: lateral extent of the mechanical domain (may exceed the imaged region).
        depth_mm: depth of the mechanical domain; the bottom boundary sits there.
        mesh_shape: ``(axial, lateral)`` number of cells; each is split into two quadratic triangles.
        poisson: Poisson ratio in [0, 0.4999].
        contact: ``"slip"`` or ``"bonded"`` probe surface (see the module docstring).

    Returns:
        :class:`CompressionSolution`: the displacement in mm per mm of applied compression.
    """
    if not 0.0 <= poisson < 0.5:
        raise InputError(f"poisson must lie in [0, 0.5), got {poisson}")
    if contact not in ("slip", "bonded"):
        raise InputError(f"contact must be 'slip' or 'bonded', got {contact!r}")
    nz, nx = mesh_shape
    if nz < 2 or nx < 2:
        raise InputError(f"mesh_shape must be at least (2, 2), got {mesh_shape}")
    x0, x1 = x_range_mm
    mesh = skfem.MeshTri.init_tensor(np.linspace(x0, x1, nx + 1), np.linspace(0.0, depth_mm, nz + 1))
    basis = skfem.Basis(mesh, skfem.ElementVector(skfem.ElementTriP2()))
    xq, zq = np.asarray(basis.global_coordinates())
    young = phantom.stiffness_at(xq, zq)
    stiffness = _plane_strain_stiffness.assemble(basis, young=young, poisson=poisson)

    top = basis.get_dofs(lambda p: np.isclose(p[1], 0.0))
    bottom = basis.get_dofs(lambda p: np.isclose(p[1], depth_mm))
    fixed = [top.nodal["u^2"], top.facet["u^2"], bottom.nodal["u^2"], bottom.facet["u^2"]]
    if contact == "bonded":
        fixed += [top.nodal["u^1"], top.facet["u^1"]]
    else:
        centre_vertex = np.argmin(np.abs(mesh.p[0] - 0.5 * (x0 + x1)) + mesh.p[1])
        fixed.append(basis.nodal_dofs[0, [centre_vertex]])
    fixed = np.unique(np.concatenate(fixed))
    prescribed = np.zeros(basis.N)
    prescribed[np.concatenate([bottom.nodal["u^2"], bottom.facet["u^2"]])] = -1.0
    a, b, dofs, interior = skfem.condense(stiffness, x=prescribed, D=fixed)
    dofs[interior] = factorized(a.tocsc())(b)
    return CompressionSolution(basis, dofs, depth_mm, mesh_shape)
