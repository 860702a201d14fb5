"""Procedural WOMD-format synthetic world: road networks, simulated traffic, a safety pass and the Scene arrays.

    from drivetune.synth import generate_scene
    scene = generate_scene(seed)          # deterministic per seed (an int or a numpy SeedSequence)

`drivetune synth` (drivetune.synth.files) writes such scenes as Scenario TFRecords.
"""

from drivetune.synth.world import generate_scene

__all__ = ["generate_scene"]
