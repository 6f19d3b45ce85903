"""The shared core: codebook values, moments, the distillation loss and text, in NumPy only
(no TensorFlow, tf_keras, TF-MOT or Keras import)."""
