"""backdoor_study: data poisoning and backdoor attacks on clinical prediction models.

Data flows one way: config -> data -> poison -> model -> trainer -> run directory -> detectors /
reports. Later stages read only what earlier ones wrote to the run directory.
"""

__version__ = "0.1.0"
