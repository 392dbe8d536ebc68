"""Fine-tuning: the LightningModule, its data module and the callbacks around the shared loop."""
