import numpy as np
import pytest

from data_prep.volume import affine_from_spacing, canonicalize


def _world(affine: np.ndarray, idx: tuple[int, int, int]) -> np.ndarray:
    return (affine @ np.array([*idx, 1.0]))[:3]


@pytest.mark.parametrize("perm", [(0, 1, 2), (2, 1, 0), (1, 0, 2), (2, 0, 1)])
@pytest.mark.parametrize("flips", [(), (0,), (1, 2), (0, 1, 2)])
def test_canonicalize_keeps_every_voxel_at_its_world_position(perm, flips):
    rng = np.random.default_rng(0)
    canon = rng.normal(size=(4, 5, 6)).astype(np.float32)
    canon_aff = affine_from_spacing((2.5, 0.7, 0.8), origin=(10.0, -20.0, 30.0))
    # scramble: permute and flip axes, tracking the affine the way a reader would see it
    arr = np.transpose(canon, perm)
    aff = canon_aff.copy()
    aff[:, :3] = canon_aff[:, list(perm)]
    for ax in flips:
        n = arr.shape[ax]
        arr = np.flip(arr, axis=ax)
        aff[:3, 3] = aff[:3, 3] + aff[:3, ax] * (n - 1)
        aff[:3, ax] = -aff[:3, ax]
    out, out_aff = canonicalize(arr, aff)
    np.testing.assert_array_equal(out, canon)
    np.testing.assert_allclose(out_aff, canon_aff, atol=1e-9)


def test_canonical_axes_point_superior_posterior_left():
    arr = np.zeros((3, 4, 5))
    aff = np.diag([-1.0, -1.0, 1.0, 1.0])[:, [2, 1, 0, 3]]  # axes: z, -y, -x
    out, out_aff = canonicalize(arr, aff)
    assert out.shape == (3, 4, 5)
    assert out_aff[2, 0] > 0 and out_aff[1, 1] > 0 and out_aff[0, 2] > 0
    np.testing.assert_allclose(_world(out_aff, (0, 0, 0)), [-4.0, -3.0, 0.0])
