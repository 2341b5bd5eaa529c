from vitals_agent.cli import run

if __name__ == "__main__":
    run()
