namespace MountQcow.Formats.Vmdk;

/// <summary>One extent line of a descriptor: <c>RW 4192256 SPARSE "disk-s001.vmdk"</c>.</summary>
/// <param name="Line">Its line number in the descriptor, for messages.</param>
/// <param name="Access">RW, RDONLY or NOACCESS.</param>
/// <param name="Sectors">The extent's size in sectors (at least 1).</param>
/// <param name="Type">How it stores its bytes.</param>
/// <param name="FileName">The file it names, as written (null for ZERO).</param>
/// <param name="Offset">FLAT: the sector of the file it starts at; 0 otherwise.</param>
internal sealed record ExtentLine(int Line, ExtentAccess Access, long Sectors, ExtentType Type, string? FileName, long Offset);
