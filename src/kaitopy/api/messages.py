"""Messages of the rules the schema itself enforces (CEL), shared with the admission webhook so a
refusal reads the same whichever layer caught it."""

from __future__ import annotations

from typing import Final

EXACTLY_ONE_OF: Final = (
    "exactly one of inference or tuning must be set: use inference to serve a model, tuning to fine-tune one"
)
NO_TOGGLE: Final = (
    "inference and tuning cannot be added or removed after creation: create a new Workspace instead"
)
PRESET_AND_TEMPLATE: Final = (
    "inference.preset and inference.template are mutually exclusive: keep preset for a catalog model "
    "or template for your own pod"
)
PRESET_OR_TEMPLATE: Final = "inference needs either preset (a catalog model) or template (your own pod spec)"
IMMUTABLE_INSTANCE_TYPE: Final = (
    "resource.instanceType is immutable: create a new Workspace to change the GPU type"
)
IMMUTABLE_LABEL_SELECTOR: Final = (
    "resource.labelSelector is immutable: create a new Workspace to select other nodes"
)
IMMUTABLE_COUNT: Final = "resource.count is immutable: create a new Workspace to change the node count"
IMMUTABLE_INFERENCE_PRESET: Final = (
    "inference.preset.name is immutable: create a new Workspace to serve another model"
)
IMMUTABLE_TUNING_PRESET: Final = (
    "tuning.preset.name is immutable: create a new Workspace to tune another model"
)
IMMUTABLE_TUNING_METHOD: Final = "tuning.method is immutable: create a new Workspace to use another method"
ADAPTER_NAMES_UNIQUE: Final = (
    "inference.adapters[].source.name must be unique: give each adapter its own name"
)
ADAPTER_STRENGTH: Final = 'strength must be a number between 0 and 1 written as a string, e.g. "0.5"'
TUNING_INPUT_ONE_OF: Final = (
    "tuning.input needs exactly one of urls, image or volumeSource: say where the training data is"
)
TUNING_OUTPUT_ONE_OF: Final = "tuning.output needs exactly one of image (with imagePushSecret) or volumeSource: say where the adapter goes"
TUNING_OUTPUT_PUSH_SECRET: Final = (
    "tuning.output.imagePushSecret is required with tuning.output.image: name a docker-registry Secret"
)

TEMPLATE_SHAPE: Final = (
    "must be a pod template (corev1.PodTemplateSpec): metadata and spec are objects, and "
    "spec.containers lists at least one container object; {problem}"
)
PARTITION_UNSUPPORTED: Final = (
    "resource.partition (Kaito's GPU partitioning: MIG / accelerator mode) is not supported by kaitopy yet; "
    "remove it to run on whole GPUs"
)
IMMUTABLE_SET_SELECTOR: Final = (
    "spec.labelSelector is immutable: create a new InferenceSet to select other nodes"
)
