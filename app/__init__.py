"""The capnet Gradio app: a thin layer of UI over the capnet library."""
