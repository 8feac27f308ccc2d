"""Entry point for operators' `pulumi up` (Pulumi.yaml `main: stacks/`): the platform program."""

import pulumi

from stacks.platform import platform, spec_from_config

platform(spec_from_config(pulumi.Config()))
