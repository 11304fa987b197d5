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


def test_affine_from_spacing_maps_each_axis_to_its_own_world_axis():
    aff = affine_from_spacing((3.0, 0.5, 0.7), origin=(1.0, 2.0, 3.0))
    np.testing.assert_allclose(_world(aff, (0, 0, 0)), [1.0, 2.0, 3.0])
    np.testing.assert_allclose(_world(aff, (1, 0, 0)), [1.0, 2.0, 6.0])  # z -> Superior
    np.testing.assert_allclose(_world(aff, (0, 1, 0)), [1.0, 2.5, 3.0])  # y -> Posterior
    np.testing.assert_allclose(_world(aff, (0, 0, 1)), [1.7, 2.0, 3.0])  # x -> Left


def test_lung_area_fraction_counts_only_enclosed_air():
    from data_prep.slicing import lung_area_fraction

    img = np.full((20, 20), -1000.0)  # outside air touches the border: not lung
    img[2:18, 2:18] = 40.0  # body
    img[5:9, 5:9] = -850.0  # a 4x4 "lung" inside the body
    assert lung_area_fraction(img) == 16 / 400
    img[5:9, 0:9] = -850.0  # now it touches the border
    assert lung_area_fraction(img) == 0.0
