"""Wire contracts shared by every component: typed messages, key/subject names, block hashing."""
