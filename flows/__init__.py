"""Thin Prefect 3 flows over pipeline/ and unetcore/."""
