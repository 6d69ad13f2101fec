"""`mixroute up`: a whole local stack (router, frontend, workers) under one supervisor."""
