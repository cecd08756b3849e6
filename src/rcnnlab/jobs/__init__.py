"""Prediction jobs over image collections of any size: `rcnnlab predict` shares the images out
over the processes torchrun starts, writes each finished image to a JSON-lines log as it goes,
continues a killed job with `--resume`, and assembles pred.json / pred.csv at the end."""
