"""One unit's gradient: zeros (not None) for the variables its loss does not reach."""

from __future__ import annotations

import numpy as np

from covidct.privacy.engines.common import unit_grads
from covidct.privacy.modes import UnitLoss
from covidct.tfsetup import tf
from tests.covidct.privacy.engines.reference import batch, unit_gradients
from tests.covidct.privacy.test_step import tiny_model


def test_unit_grads_is_the_units_own_gradient_with_zeros_where_it_does_not_reach():
    model, chunk = tiny_model(seed=4), batch()
    unused = tf.Variable(tf.ones([3]))
    variables = [*model.trainable_variables, unused]
    x, mask, y, _ = (tf.constant(a) for a in chunk)
    grads, loss = unit_grads(model, variables, UnitLoss.MEAN, x[1], mask[1], y[1])
    want, want_loss = unit_gradients(model, chunk)[1]
    for g, w in zip(grads[:-1], want, strict=True):
        np.testing.assert_allclose(g.numpy(), w, rtol=2e-4, atol=2e-6)
    np.testing.assert_array_equal(grads[-1].numpy(), np.zeros(3))
    np.testing.assert_allclose(float(loss), want_loss, rtol=1e-5)
