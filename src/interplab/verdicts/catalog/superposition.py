"""Toy Models of Superposition reproduced: phase diagram, feature geometry, neuron model."""

from interplab.verdicts.crux import define

define(
    id="tms-phase", experiment="superposition", family="superposition",
    question="Does the trained 2-features-in-1-dimension phase diagram match the closed form?",
    claim="trained models land in the phase the closed form predicts",
    statistic="share of grid cells (farther than the margin from the boundary) whose trained phase equals "
              "the closed form's",
    null="the share of the most common observed phase (what a constant prediction scores)",
    direction="higher",
    unit="grid cells (bootstrap)",
    positive_control="weights set to the closed form's optimum in every cell",
    negative_control="the same closed-form weights assigned to randomly permuted cells",
)
define(
    id="tms-sticky-d1", experiment="superposition", family="superposition-secondary", primary=False,
    question="Do feature dimensionalities stick at 1, 3/4, 2/3, 1/2, 2/5, 3/8 (round-1 form)?",
    claim="feature dimensionalities cluster at the sticky values",
    statistic="share of represented features with D_i in [0.3, 1] within 0.03 of a sticky value",
    null="the same share for D_i uniform on [0.3, 1]",
    direction="higher",
    unit="features pooled over densities",
    positive_control="planted polytope geometries", negative_control="random weights",
    why="superseded by tms-sticky: monosemantic features have D_i = 1 exactly, which the uniform null "
        "barely covers, so dense models beat it without any fractional geometry (review finding 7)",
)
define(
    id="tms-sticky", experiment="superposition", family="superposition",
    question="Do features in superposition take the sticky fractional geometries (3/4, 2/3, 1/2, 2/5, 3/8)?",
    claim="feature dimensionalities of features in superposition cluster at the fractional sticky values",
    statistic="share of represented features with D_i in [0.3, 0.9] (D_i = 1, a dedicated dimension, "
              "excluded) within 0.03 of 3/4, 2/3, 1/2, 2/5 or 3/8",
    null="the same share for D_i uniform on [0.3, 0.9]",
    direction="higher",
    unit="trained models, one per density (cluster bootstrap over densities)",
    positive_control="planted weights made of antipodal pairs, triangles, pentagons and tetrahedra",
    negative_control="planted weights with Gaussian random columns (continuous D_i)",
)
define(
    id="tms-neuron", experiment="superposition", family="superposition",
    question="Do neurons become polysemantic as features get sparser (neuron model)?",
    claim="neurons carry more features at the sparsest density than at density 1",
    statistic="median PR_j of live neurons (1a's activation mass) at the sparsest density minus at density "
              "1, per seed, averaged",
    null="0", direction="higher",
    unit="training seeds (t interval)",
    positive_control="planted weights: monosemantic at density 1, each neuron mixing 3 features at the "
                     "sparsest",
    negative_control="the same planted monosemantic weights at both densities",
)
