"""Analysis that only the tools use: ablation plans and paired statistics (``ablation``),
class confusion of a detector's errors (``class_confusion``), anchor coverage of ground-truth
boxes (``anchor_coverage``). Nothing of the model or the engine imports it."""
