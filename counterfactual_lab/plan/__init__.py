"""Plan the work: work items (row × attribute × value × seed), caption rewriting, attribute words, inpainting masks."""
