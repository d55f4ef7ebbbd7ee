"""Attribution-based detection: Mahalanobis distance on gradients instead of activations.

The gradient of log p(the model's own answer) with respect to a site's activation says how the
answer depends on that site on this input; an input answered through an unusual path should have
an unusual gradient. Scored like activations (the reference's middle ground between activation
statistics and explanations): `mahalanobis` with the same shrinkage, on `Views.grads[site]`.
"""

from __future__ import annotations

from interplab.mad.base import register
from interplab.mad.mahalanobis import Mahalanobis


@register("attribution", help="Mahalanobis distance of the gradient of the model's answer at a site")
class Attribution(Mahalanobis):
    family = "attribution"
    source = "grads"
