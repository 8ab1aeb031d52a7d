from sysmon.cli import main

main()
