"""The serving model a trained head is exported as (``model``), and the graph-side image decoder
(``graph_images``) and tokenizer (``graph_tokenizer``) that let it take raw images or texts."""
