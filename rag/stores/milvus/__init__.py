"""The Milvus store (an optional extra): built indexes (`store`), live collections
(`live`, versioned writes in `versions`), and what both share with the client (`client`)."""
