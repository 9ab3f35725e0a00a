"""One seeded sample of content positions per long document, shared by every per-position measure.

Leave-one-out, representation leave-one-out and eq. 5 cost one forward or backward pass per content position (per
layer for the last two): quadratic in the document's length. A document with more than ``sample_above`` content
tokens (:class:`~eval_suite.settings.MeasureConfig`) is measured at one seeded uniform sample of ``sample_positions``
of them instead, the same positions for the three, drawn from (seed, the example's dataset index) alone
(:func:`eval_suite.attribution.sample_positions`); shorter documents are measured at every position, exactly.

The figures a sampled method gives are then estimates from K of L positions: eq. 5's summaries are means over the
sampled positions (unbiased, with the finite-population standard error), and every agreement metric against a
sampled method is computed over the sampled positions, with its delete-one jackknife standard error
(:meth:`eval_suite.agreement.AgreementPass.rows`). An exact document's standard errors are 0.
"""

from __future__ import annotations

from dataclasses import dataclass

KEY = "position_sample"


@dataclass
class PositionSample:
    """The positions the per-position measures of a batch measure."""

    positions: object  # [B, L] bool: every content position of a short document, the sample of a long one
    sampled: object  # [B] bool: documents measured on a sample smaller than their content
    population: object  # [B] content positions of each document
    active: bool  # the run has a document long enough to be sampled: the sampled rows and standard errors exist

    def rows(self, select) -> "PositionSample":
        """The documents ``select`` (a slice or indices) of the batch."""
        return PositionSample(self.positions[select], self.sampled[select], self.population[select], self.active)


def sampling_active(config, content) -> bool:
    """Whether the run (``config.longest_content``, set by the runner) or else this batch has a document longer than
    ``config.sample_above`` content tokens and ``config.sample_positions``."""
    longest = config.longest_content if config.longest_content is not None else int(content.sum(dim=1).max())
    return longest > max(config.sample_above, config.sample_positions)


def measured_count(config, n_content: int) -> int:
    """How many positions of a document with ``n_content`` content tokens the per-position measures measure."""
    sampled = n_content > config.sample_above and n_content > config.sample_positions
    return config.sample_positions if sampled else n_content


def measured_positions(ctx, config, state) -> PositionSample:
    """The batch's :class:`PositionSample`, drawn once and kept in ``state.shared``."""
    if KEY not in state.shared:
        from .attribution import sample_positions

        content = ctx.batch.content_mask
        population = content.sum(dim=1)
        long = (population > config.sample_above) & (population > config.sample_positions)
        positions = content.clone()
        if bool(long.any()):
            sample = sample_positions(state.indices, content, config.sample_positions, config.seed)
            positions[long] = sample[long]
        state.shared[KEY] = PositionSample(positions, long, population, sampling_active(config, content))
    return state.shared[KEY]
