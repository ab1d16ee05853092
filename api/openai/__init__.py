"""OpenAI's Files and Vector Stores APIs over collections: the wire objects (`objects`),
what a vector store keeps beside its collection (`state`), stored files (`files`),
attaching them (`store_files`) and attribute filters (`filters`)."""
