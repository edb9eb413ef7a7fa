"""ffsd-tf from Python: the README's "Use it from Python" section, runnable as written (CI runs it).

    python examples/python_api.py      # ~2 minutes on 2 CPU cores; needs Fashion-MNIST (make fashion-mnist)

Trains an FFSD cohort (2 common students + leader, ResNet-8) on 2,000 Fashion-MNIST images for 2
epochs with the recipe's loss weights (inside the model: no callback) and the paper's optimizers,
then exports the leader (SavedModel, TFLite, leader.keras) to runs/python_api/export/<version>.
"""

# --- README: Use it from Python ---
from ffsd_tf import FFSD, export_model, load_dataset

data = load_dataset("fashion_mnist", train_subset=2000, batch_size=128)  # or "folder", data_dir="photos"
model = FFSD("resnet8", num_classes=data.num_classes, input_shape=data.image_shape)  # the recipe
model.compile()  # the paper's optimizers, one per role (or one optimizer, cloned per role)
history = model.fit(data.train_stream(), epochs=2, steps_per_epoch=data.steps_per_epoch,
                    validation_data=data.test_dataset())
print({k: round(v[-1], 4) for k, v in history.history.items() if k.startswith(("val_leader", "weights/"))})
report = export_model(model, data, export_dir="runs/python_api/export")  # SavedModel, TFLite, leader.keras
print("exported to", report["path"])
# --- end ---
