"""bioaug: balance rare classes with a class-conditional GAN, and test whether it helps.

Rules (workflow/rules/): data.smk (download, index, split, tile), gan.smk (train_gan,
generate, balance, gan_quality), classify.smk (classify, feature_classifier), report.smk.
Each rule's script calls one entry point of workflow/bioaug/stages/.
"""

from snakemake.utils import min_version

from bioaug.config import check_yaml, validate_config

min_version("9.0")

# The default config.yaml (of the working folder), unless the user gives their own with
# --configfile: then theirs replaces it instead of being merged into the demo's.
if not workflow.overwrite_configfiles:
    check_yaml("config.yaml")
    workflow.configfile("config.yaml")


# Once, before any job: the schema (types, ranges, defaults), then the rules between keys.
validate_config(config)


include: "workflow/rules/common.smk"
include: "workflow/rules/data.smk"
include: "workflow/rules/gan.smk"
include: "workflow/rules/classify.smk"
include: "workflow/rules/report.smk"


report: "workflow/report/workflow.rst"


rule all:
    default_target: True
    input:
        all_outputs(),
