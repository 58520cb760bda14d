"""bioaug: balance rare classes with a class-conditional GAN, and test whether it helps.

Stages (workflow/rules/): data.smk (download, index, split, tile), gan.smk (train_gan,
generate, balance), classify.smk, report.smk. All logic lives in workflow/bioaug/.
"""

from snakemake.utils import min_version, validate

min_version("9.0")


configfile: "config.yaml"


validate(config, "workflow/schemas/config.schema.yaml")


include: "workflow/rules/common.smk"
include: "workflow/rules/data.smk"
include: "workflow/rules/gan.smk"
include: "workflow/rules/classify.smk"
include: "workflow/rules/report.smk"


report: "workflow/report/workflow.rst"


rule all:
    input:
        all_outputs(),
    default_target: True
